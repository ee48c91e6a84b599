//! One file past 500 lines because every test loads settings through the same layers
//! (`Settings::from_toml`, `merged`): together they read as the list of what a configuration
//! guarantees, and split by section each file would set the layering up again.
//!
//! Settings: the layers, the defaults the README documents, errors that name the key,
//! secrets that never show. The environment's own tests are beside it, in `environment.rs`.

use super::*;
use std::net::IpAddr;

#[test]
fn the_demo_runs_without_a_registry_and_routes_its_group() {
    let settings = Settings::from_toml(DEMO_TOML).unwrap();
    assert_eq!(settings.registry.kind(), "file");
    let app = AppName::parse("ORDER-SERVICE").unwrap();
    assert_eq!(
        settings.groups.routes.as_ref().unwrap()[&app],
        vec![AppName::parse("GATEWAY-PUBLIC").unwrap()]
    );
}

fn allowed(settings: &Settings, addr: &str) -> bool {
    let addr: IpAddr = addr.parse().unwrap();
    settings.security.policy.check(addr).is_ok()
}

/// Every default of the README's configuration table, key by key, from a file that sets
/// nothing: the defaults are the bottom layer of every configuration, not only the demo's.
#[test]
fn an_empty_file_yields_every_documented_default() {
    let settings = Settings::from_toml("").unwrap();
    let secs = Duration::from_secs;
    let ms = Duration::from_millis;

    assert_eq!(settings.server.listen, "0.0.0.0:8080".parse().unwrap());
    assert_eq!(settings.server.body_limit, 65536);
    assert_eq!(settings.server.shutdown_grace, secs(30));
    assert_eq!(settings.server.header_read_timeout, secs(10));
    assert_eq!(settings.server.body_read_timeout, secs(10));
    assert_eq!(settings.server.max_connections, 1024);
    assert_eq!(settings.server.max_connections_per_ip, 256);
    assert_eq!(settings.log.format, LogFormat::Human);
    assert_eq!(settings.log.level, "info");

    // security.allow: loopback; deny, trusted_proxies, tokens: none.
    assert!(allowed(&settings, "127.0.0.1"));
    assert!(allowed(&settings, "127.9.9.9"));
    assert!(allowed(&settings, "::1"));
    assert!(!allowed(&settings, "10.0.0.1"));
    assert!(
        settings
            .security
            .policy
            .admits("203.0.113.9".parse().unwrap()),
        "the probes are open to everyone by default"
    );
    assert!(!settings.security.tokens.is_required());
    assert_eq!(
        settings
            .security
            .policy
            .client_addr("127.0.0.1".parse().unwrap(), &["10.9.9.9"])
            .unwrap(),
        "127.0.0.1".parse::<IpAddr>().unwrap(),
        "no proxy is trusted by default"
    );

    match &settings.registry {
        RegistrySettings::File(file) => {
            assert_eq!(file.path, std::path::PathBuf::from("config/instances.toml"));
            assert_eq!(file.refresh, secs(5));
        }
        other => panic!("the default registry is the file, got {other:?}"),
    }
    assert!(
        settings
            .groups
            .routes
            .as_ref()
            .is_some_and(|r| r.is_empty()),
        "the static source, with no route"
    );
    assert!(settings.groups.sql.is_none());

    let gateway = &settings.gateway;
    assert_eq!(gateway.notifier, NotifierKind::Webhook);
    assert!(gateway.group_notifiers.is_empty());
    assert_eq!(gateway.path, "/synchspeed/v1/notify");
    assert_eq!(gateway.timeout, secs(2));
    assert_eq!(gateway.attempts, 3);
    assert_eq!(gateway.backoff, ms(100));
    assert_eq!(gateway.backoff_max, secs(2));
    assert_eq!(gateway.concurrency, 256);
    assert!(gateway.secret.is_none(), "no signature by default");
    assert!(gateway.port_metadata_key.is_none());
    assert!(gateway.nodes.is_empty());
    let haproxy = &gateway.haproxy;
    assert_eq!(haproxy.offline_state, HaproxyOfflineState::Drain);
    assert!(!haproxy.wait_idle);
    assert_eq!(haproxy.idle_timeout, secs(30));
    assert_eq!(haproxy.idle_poll, ms(100));
    assert_eq!(haproxy.warmup, None, "0s: no warm-up");
    assert_eq!(haproxy.warmup_start_percent, 10);
    assert_eq!(haproxy.warmup_steps, 10);

    let drain = &settings.drain;
    assert_eq!(drain.wait_timeout, secs(30));
    assert_eq!(drain.wait_timeout_max, secs(300));
    assert_eq!(drain.max_in_flight, 1024);
    assert_eq!(drain.hold_max, secs(24 * 3600));
    assert_eq!(drain.reconcile_every, secs(10));
    assert_eq!(drain.retry_max, secs(300));
    assert_eq!(drain.idempotency_ttl, secs(24 * 3600));

    assert_eq!(settings.store.url.expose(), "sqlite://data/synchspeed.db");
    assert_eq!(settings.store.retention, secs(30 * 24 * 3600));
    assert_eq!(settings.store.prune_every, secs(3600));
    assert_eq!(settings.store.wal_max_bytes, 64 * 1024 * 1024);
    assert_eq!(settings.store.kind, crate::config::StoreKind::Sqlite);
    assert_eq!(settings.store.pool_size, 10);
    assert_eq!(settings.store.connect_timeout, secs(5));
    assert_eq!(settings.store.statement_timeout, secs(5));

    assert_eq!(settings.cluster.replica, None);
    assert_eq!(settings.cluster.advertise, None);
    assert_eq!(settings.cluster.lease, secs(10));
}

#[test]
fn a_postgres_store_and_its_cluster_are_read_and_checked() {
    let settings = Settings::from_toml(
        "[store]\nurl = \"postgres://synchspeed:s3cret@db.internal:5432/synchspeed\"\n\
         [cluster]\nreplica = \"synchspeed-0\"\nadvertise = \"http://10.1.2.3:8080\"\nlease = \"6s\"\n",
    )
    .unwrap();
    assert_eq!(settings.store.kind, crate::config::StoreKind::Postgres);
    assert!(!format!("{:?}", settings.store).contains("s3cret"));
    assert_eq!(settings.cluster.replica.as_deref(), Some("synchspeed-0"));
    assert_eq!(
        settings.cluster.advertise.as_ref().map(url::Url::as_str),
        Some("http://10.1.2.3:8080/")
    );
    assert_eq!(settings.cluster.lease, std::time::Duration::from_secs(6));

    for (text, key) in [
        ("[store]\nurl = \"mysql://root@127.0.0.1/x\"", "store.url"),
        ("[store]\npool_size = 0", "store.pool_size"),
        ("[cluster]\nlease = \"1s\"", "cluster.lease"),
        (
            "[cluster]\nadvertise = \"10.1.2.3:8080\"",
            "cluster.advertise",
        ),
        (
            "[cluster]\nadvertise = \"http://10.1.2.3:8080/api\"",
            "cluster.advertise",
        ),
    ] {
        let error = Settings::from_toml(text).unwrap_err().to_string();
        assert!(error.contains(&format!("`{key}`")), "{text}: {error}");
    }
}

/// The defaults of the other registry kinds, from a file that names only the kind (and, for
/// Eureka, the one key without a default).
#[test]
fn each_registry_kind_has_its_documented_defaults() {
    let eureka = Settings::from_toml(
        "[registry]\nkind = \"eureka\"\n[registry.eureka]\nurls = [\"http://e:8761/eureka\"]",
    )
    .unwrap();
    match &eureka.registry {
        RegistrySettings::Eureka(e) => {
            assert_eq!(e.refresh, Duration::from_secs(5));
            assert_eq!(e.timeout, Duration::from_secs(3));
        }
        other => panic!("expected eureka, got {other:?}"),
    }
    assert_eq!(
        error_key("[registry]\nkind = \"eureka\""),
        "registry.eureka.urls",
        "Eureka peers have no default"
    );
    let zookeeper = Settings::from_toml("[registry]\nkind = \"zookeeper\"").unwrap();
    match &zookeeper.registry {
        RegistrySettings::Zookeeper(z) => {
            assert_eq!(z.connect, "127.0.0.1:2181");
            assert_eq!(z.root, "/services");
            assert_eq!(z.session_timeout, Duration::from_secs(10));
            assert_eq!(z.timeout, Duration::from_secs(3));
        }
        other => panic!("expected zookeeper, got {other:?}"),
    }
}

#[test]
fn a_file_replaces_lists_rather_than_adding_to_the_defaults() {
    let settings = Settings::from_toml("[security]\nallow = [\"10.0.0.0/8\"]").unwrap();
    assert!(allowed(&settings, "10.1.2.3"));
    assert!(
        !allowed(&settings, "127.0.0.1"),
        "the default loopback entry must not survive an operator's own list"
    );
}

const SECRETS: &str = "[security]\ntokens = [\"bare-secret-0123456789\", { principal = \"ci\", token = \"named-secret-0123456789\" }]\n\
    [gateway]\nsecret = \"hmac-secret-0123456789\"\n\
    [registry]\nkind = \"eureka\"\n[registry.eureka]\nurls = [\"http://user:url-password-0123@eureka:8761/eureka\"]\n\
    [registry.nacos]\nservers = [\"http://nacos:nacos-url-pw-0123@nacos:8848/nacos\"]\npassword = \"nacos-password-0123\"\n\
    [store]\nurl = \"sqlite://data/store.db\"";

fn assert_no_secret(text: &str) {
    for secret in [
        "bare-secret-0123456789",
        "named-secret-0123456789",
        "hmac-secret-0123456789",
        "url-password-0123",
        "nacos-url-pw-0123",
        "nacos-password-0123",
    ] {
        assert!(!text.contains(secret), "{secret} shows in:\n{text}");
    }
}

#[test]
fn the_production_shaped_examples_are_valid() {
    for example in [
        include_str!("../../config/eureka.example.toml"),
        include_str!("../../config/nacos.example.toml"),
    ] {
        if let Err(e) = Settings::from_toml(example) {
            panic!("{e}\n{example}");
        }
    }
}

#[test]
fn a_nacos_registry_takes_its_documented_defaults_and_hides_its_password() {
    let settings = Settings::from_toml(
        "[registry]\nkind = \"nacos\"\n[registry.nacos]\nservers = [\"http://n1:8848/nacos/\", \"http://n2:8848/nacos\"]\n\
         username = \"nacos\"\npassword = \"nacos-password-0123\"",
    )
    .unwrap();
    let RegistrySettings::Nacos(nacos) = &settings.registry else {
        panic!("a nacos registry, got {:?}", settings.registry);
    };
    assert_eq!(nacos.servers[0].as_str(), "http://n1:8848/nacos");
    assert_eq!(nacos.namespace, "public");
    assert_eq!(nacos.groups, ["DEFAULT_GROUP"]);
    assert_eq!(nacos.clusters, ["DEFAULT"]);
    assert_eq!(nacos.api, crate::config::NacosApi::Auto);
    assert_eq!(nacos.refresh, Duration::from_secs(1));
    assert_eq!(nacos.timeout, Duration::from_secs(3));
    assert_eq!(nacos.sweep_per_second, 5);
    assert!(nacos.push);
    assert_eq!(nacos.grpc_port, None);
    assert_no_secret(&format!("{settings:?}"));
    assert_eq!(
        error_key("[registry]\nkind = \"nacos\""),
        "registry.nacos.servers"
    );
    assert_eq!(
        error_key(
            "[registry]\nkind = \"nacos\"\n[registry.nacos]\nservers = [\"http://n1:8848/nacos\"]\napi = \"v2\""
        ),
        "registry.nacos.api"
    );
    assert_eq!(
        error_key(
            "[registry]\nkind = \"nacos\"\n[registry.nacos]\nservers = [\"http://n1:8848/nacos\"]\nusername = \"nacos\""
        ),
        "registry.nacos.username"
    );
}

#[test]
fn secrets_never_show_in_debug_output() {
    let settings = Settings::from_toml(SECRETS).unwrap();
    assert!(settings.gateway.secret.is_some());
    let debug = format!("{settings:?}");
    assert_no_secret(&debug);
    assert!(
        debug.contains("eureka:8761"),
        "the rest of the URL shows: {debug}"
    );
    assert_eq!(
        RedactedUrl::new("postgres://app:hunter2-password@db:5432/synchspeed").to_string(),
        "postgres://app:***@db:5432/synchspeed"
    );
}

#[test]
fn the_effective_configuration_shows_every_layer_with_secrets_redacted() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("synchspeed.toml");
    std::fs::write(&path, SECRETS).unwrap();
    let shown = Settings::effective_toml(Some(&path)).unwrap();
    assert_no_secret(&shown);
    let value: toml::Value = toml::from_str(&shown).unwrap();
    // From the file.
    assert_eq!(value["registry"]["kind"].as_str(), Some("eureka"));
    assert_eq!(value["gateway"]["secret"].as_str(), Some(REDACTED));
    assert_eq!(
        value["security"]["tokens"][1]["principal"].as_str(),
        Some("ci")
    );
    // From the defaults under it.
    assert_eq!(value["drain"]["reconcile_every"].as_str(), Some("10s"));
    assert_eq!(value["server"]["listen"].as_str(), Some("0.0.0.0:8080"));
    // What it shows is itself a configuration that loads (secrets aside).
    assert!(shown.contains("[gateway.haproxy]"), "{shown}");
}

#[test]
fn the_reconciler_principal_is_reserved() {
    assert_eq!(
        error_key(
            "[security]\ntokens = [{ principal = \"synchspeed-reconciler\", token = \"0123456789abcdef\" }]"
        ),
        "security.tokens[0]"
    );
}

fn error_key(text: &str) -> String {
    match Settings::from_toml(text).unwrap_err() {
        ConfigError::Invalid { key, .. } => key,
        other => panic!("expected a key error, got {other}"),
    }
}

#[test]
fn errors_name_the_key() {
    assert_eq!(
        error_key("[security]\nallow = [\"10.0.0.0/33\"]"),
        "security.allow[0]"
    );
    assert_eq!(
        error_key("[gateway]\ntimeout = \"soon\""),
        "gateway.timeout"
    );
    assert_eq!(error_key("[registry]\nkind = \"consul\""), "registry.kind");
    assert_eq!(
        error_key("[security]\ntokens = [\"short\"]"),
        "security.tokens[0]"
    );
    assert_eq!(
        error_key("[gateway.nodes]\nEDGE = [\"no-port\"]"),
        "gateway.nodes.EDGE"
    );
}

#[test]
fn haproxy_groups_are_chosen_per_group_and_may_use_unix_sockets() {
    let settings = Settings::from_toml(
        "[gateway.group_notifiers]\n\"haproxy-edge\" = \"haproxy\"\n\
         [gateway.nodes]\n\"HAPROXY-EDGE\" = [\"unix:/run/haproxy/admin.sock\", \"10.3.0.1:9999\"]\n\
         [gateway.haproxy]\nstate = \"maint\"\nwarmup = \"30s\"",
    )
    .unwrap();
    let gateway = &settings.gateway;
    let edge = AppName::parse("HAPROXY-EDGE").unwrap();
    assert_eq!(gateway.kind_of(&edge), NotifierKind::Haproxy);
    assert_eq!(
        gateway.kind_of(&AppName::parse("GATEWAY-PUBLIC").unwrap()),
        NotifierKind::Webhook
    );
    assert_eq!(gateway.haproxy.offline_state, HaproxyOfflineState::Maint);
    assert_eq!(gateway.haproxy.warmup, Some(Duration::from_secs(30)));
    assert!(!gateway.haproxy.wait_idle, "off unless asked for");
}

#[test]
fn zookeeper_settings_are_read_and_checked() {
    let settings = Settings::from_toml(
        "[registry]\nkind = \"zookeeper\"\n[registry.zookeeper]\nconnect = \"zk1:2181,zk2:2181\"\nroot = \"/services/\"",
    )
    .unwrap();
    match &settings.registry {
        RegistrySettings::Zookeeper(zookeeper) => {
            assert_eq!(zookeeper.connect, "zk1:2181,zk2:2181");
            assert_eq!(zookeeper.root, "/services", "a trailing slash is dropped");
        }
        other => panic!("expected zookeeper, got {other:?}"),
    }
    assert_eq!(
        error_key("[registry]\nkind = \"zookeeper\"\n[registry.zookeeper]\nroot = \"services\""),
        "registry.zookeeper.root"
    );
    assert_eq!(
        error_key("[registry]\nkind = \"zookeeper\"\n[registry.zookeeper]\nconnect = \"zk1\""),
        "registry.zookeeper.connect"
    );
}

#[test]
fn haproxy_settings_are_checked() {
    // A Unix socket is a runtime-API address, not a webhook node.
    assert_eq!(
        error_key("[gateway.nodes]\nEDGE = [\"unix:/run/haproxy.sock\"]"),
        "gateway.nodes.EDGE"
    );
    assert_eq!(
        error_key("[gateway.group_notifiers]\nEDGE = \"nginx\""),
        "gateway.group_notifiers.EDGE"
    );
    assert_eq!(
        error_key("[gateway.haproxy]\nstate = \"off\""),
        "gateway.haproxy.state"
    );
    assert_eq!(
        error_key("[gateway.haproxy]\nwarmup_start_percent = 0"),
        "gateway.haproxy.warmup_start_percent"
    );
}

#[test]
fn unknown_keys_are_refused() {
    let err = Settings::from_toml("[server]\nlisten_on = \"0.0.0.0:1\"").unwrap_err();
    assert!(err.to_string().contains("listen_on"), "{err}");
}

#[test]
fn bare_addresses_are_single_host_ranges_and_tokens_name_principals() {
    let settings = Settings::from_toml(
        "[security]\nallow = [\"10.1.2.3\"]\ntokens = [\"0123456789abcdef\", {principal = \"ci\", token = \"fedcba9876543210\"}]",
    )
    .unwrap();
    assert!(
        settings
            .security
            .policy
            .check("10.1.2.3".parse().unwrap())
            .is_ok()
    );
    assert!(
        settings
            .security
            .policy
            .check("10.1.2.4".parse().unwrap())
            .is_err()
    );
    assert_eq!(
        settings.security.tokens.authenticate("0123456789abcdef"),
        Some("token-1")
    );
    assert_eq!(
        settings.security.tokens.authenticate("fedcba9876543210"),
        Some("ci")
    );
}

#[test]
fn group_routes_are_canonical_app_names() {
    let settings =
        Settings::from_toml("[groups.static]\n\"order-service\" = [\"gateway-public\"]").unwrap();
    let app = AppName::parse("ORDER-SERVICE").unwrap();
    assert_eq!(
        settings.groups.routes.as_ref().unwrap()[&app],
        vec![AppName::parse("GATEWAY-PUBLIC").unwrap()]
    );
}

#[test]
fn the_sql_source_is_read_and_checked() {
    let settings = Settings::from_toml(
        "[groups]\nsource = [\"static\", \"sql\"]\n[groups.sql]\nurl = \"mysql://gw:secret-pw@db:3306/gateway\"\n\
         query = \"SELECT gateway_group FROM gw_route WHERE service_id = ?\"",
    )
    .unwrap();
    let sql = settings.groups.sql.as_ref().unwrap();
    assert_eq!(sql.dialect, SqlDialect::MySql);
    assert_eq!(sql.refresh, Duration::from_secs(30));
    assert_eq!(sql.stale_max, Duration::from_secs(600));
    assert_eq!(sql.pool_size, 4);
    assert_eq!(sql.statement_timeout, Duration::from_secs(2));
    assert!(settings.groups.routes.is_some(), "both sources");
    assert!(!format!("{settings:?}").contains("secret-pw"));

    let sql_only = |rest: &str| format!("[groups]\nsource = \"sql\"\n[groups.sql]\n{rest}");
    assert_eq!(error_key(&sql_only("")), "groups.sql.url");
    assert_eq!(
        error_key(&sql_only(
            "url = \"postgres://db/gw\"\nquery = \"SELECT g FROM r WHERE a = ?\""
        )),
        "groups.sql.query",
        "PostgreSQL binds $1"
    );
    assert_eq!(
        error_key(&sql_only(
            "url = \"sqlite://x.db\"\nquery = \"SELECT g FROM r WHERE a = ?\""
        )),
        "groups.sql.url"
    );
    assert_eq!(
        error_key(&sql_only(
            "url = \"postgres://db/gw\"\nquery = \"SELECT g FROM r WHERE a = $1\"\nstale_max = \"1s\""
        )),
        "groups.sql.stale_max"
    );
    assert_eq!(error_key("[groups]\nsource = \"ldap\""), "groups.source");
}

#[test]
fn the_same_token_under_two_principals_is_refused_naming_the_key() {
    let error = Settings::from_toml(
        "[security]\ntokens = [{ principal = \"ci\", token = \"0123456789abcdef-shared\" },\n\
         { principal = \"deployer\", token = \"0123456789abcdef-shared\" }]",
    )
    .unwrap_err();
    let text = error.to_string();
    assert!(text.contains("security.tokens[1]"), "{text}");
    assert!(text.contains("security.tokens[0]"), "{text}");
    assert!(!text.contains("0123456789abcdef-shared"), "{text}");
}

#[test]
fn secret_looking_query_parameters_are_masked_wherever_a_url_is_shown() {
    let shown = RedactedUrl::new(
        "postgres://db:5432/synchspeed?sslmode=require&password=hunter2&PWD=x&api_token=t&keyspace=k",
    )
    .to_string();
    assert!(!shown.contains("hunter2"), "{shown}");
    assert!(shown.contains("password=***"), "{shown}");
    assert!(shown.contains("PWD=***"), "{shown}");
    assert!(shown.contains("api_token=***"), "{shown}");
    assert!(shown.contains("sslmode=require"), "{shown}");
    let effective = effective(
        Layer::Text(
            "[store]\nurl = \"postgres://db/synchspeed?password=hunter2\"\n\
         [groups]\nsource = \"sql\"\n[groups.sql]\nurl = \"mysql://db/gw?pass=hunter3\"\n\
         query = \"SELECT g FROM r WHERE a = ?\"",
        ),
        &[],
    )
    .unwrap();
    assert!(
        !effective.contains("hunter2") && !effective.contains("hunter3"),
        "{effective}"
    );
}
