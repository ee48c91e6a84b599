//! Test doubles and launchers shared by the black-box tests.
#![allow(dead_code)]

pub mod eureka;
pub mod gateway;
