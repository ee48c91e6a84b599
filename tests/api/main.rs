//! Black-box tests: the real application on 127.0.0.1:0 against a Eureka double and gateway
//! node fakes. One test binary (one link) for the whole suite.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../support/mod.rs"]
mod support;

mod helpers;

mod abuse;
mod cli;
mod client;
mod console;
mod contract;
mod crash;
mod drain;
mod errors;
mod events;
mod groups_sql;
mod guard;
mod haproxy;
mod hostile_server;
mod intent;
mod nacos;
mod neighbours;
mod registry;
mod replicas;
mod security;
mod store;
mod zookeeper;
