//! Test doubles and launchers shared by the black-box tests.
#![allow(dead_code)]

pub mod backend;
pub mod eureka;
pub mod gateway;
pub mod haproxy;
pub mod nacos_double;
pub mod rnacos;
pub mod route_db;
pub mod store_db;
pub mod tcp_proxy;
pub mod zookeeper;
