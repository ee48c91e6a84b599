import java.util.Collection;
import java.util.HashMap;
import java.util.Map;

import org.apache.curator.framework.CuratorFramework;
import org.apache.curator.framework.CuratorFrameworkFactory;
import org.apache.curator.retry.RetryForever;
import org.apache.curator.x.discovery.ServiceDiscovery;
import org.apache.curator.x.discovery.ServiceDiscoveryBuilder;
import org.apache.curator.x.discovery.ServiceInstance;
import org.apache.curator.x.discovery.details.JsonInstanceSerializer;
import org.springframework.cloud.zookeeper.discovery.ZookeeperInstance;

/**
 * A real Curator client doing what Spring Cloud Zookeeper does, for synchspeed's tests:
 *
 *   query CONNECT ROOT SERVICE            prints "id status" per instance, as a consumer reads them
 *   register CONNECT ROOT SERVICE ID ADDRESS PORT
 *                                         registers like a Spring Boot instance (status UP), prints
 *                                         "registered", and stays until stdin closes; its session
 *                                         re-registers its own copy on every reconnection
 */
public class CuratorCheck {
    public static void main(String[] args) throws Exception {
        CuratorFramework client = CuratorFrameworkFactory.newClient(args[1], 10000, 3000, new RetryForever(100));
        client.start();
        client.blockUntilConnected();
        ServiceDiscovery<ZookeeperInstance> discovery = ServiceDiscoveryBuilder.builder(ZookeeperInstance.class)
            .client(client)
            .basePath(args[2])
            .serializer(new JsonInstanceSerializer<>(ZookeeperInstance.class))
            .build();
        discovery.start();
        if (args[0].equals("query")) {
            Collection<ServiceInstance<ZookeeperInstance>> instances = discovery.queryForInstances(args[3]);
            for (ServiceInstance<ZookeeperInstance> instance : instances) {
                String status = instance.getPayload().getMetadata().get("instance_status");
                System.out.println(instance.getId() + " " + status + " " + instance.getAddress() + ":" + instance.getPort());
            }
        } else {
            Map<String, String> metadata = new HashMap<>();
            metadata.put("instance_status", "UP");
            ServiceInstance<ZookeeperInstance> instance = ServiceInstance.<ZookeeperInstance>builder()
                .name(args[3])
                .id(args[4])
                .address(args[5])
                .port(Integer.parseInt(args[6]))
                .payload(new ZookeeperInstance(args[3] + "-1", args[3], metadata))
                .build();
            discovery.registerService(instance);
            System.out.println("registered");
            System.out.flush();
            while (System.in.read() != -1) {
                // Until the test closes stdin.
            }
        }
        discovery.close();
        client.close();
    }
}
