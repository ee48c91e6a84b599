-- The instances an operation touched, filled from its journaled body by the insert itself.
-- Journaling an operation is on every caller's path, before the registry write: as one
-- statement it is one round trip to SQLite and atomic without a transaction of its own, where
-- an explicit transaction with one more INSERT per instance took four round trips or more.
CREATE TRIGGER operation_instances_from_body AFTER INSERT ON operations
BEGIN
    INSERT INTO operation_instances (operation_id, app, instance_id, ip, port)
    SELECT NEW.id,
           json_extract(value, '$.app'),
           json_extract(value, '$.instanceId'),
           json_extract(value, '$.ip'),
           json_extract(value, '$.port')
    FROM json_each(NEW.body, '$.instances');
END;
