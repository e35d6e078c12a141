//! Integration tests: the real server on port 0, driven through real sockets.

#![allow(clippy::unwrap_used)]

mod admin_api;
mod api;
mod auth;
mod bad_input;
mod cli;
mod collector;
mod common;
mod http;
mod identity;
mod interop;
mod keep_alive;
mod lifecycle;
mod limits;
mod liveness;
mod openapi;
mod persistence;
mod rollout;
mod sim;
mod upgrade;
mod websocket;
mod workflow;
