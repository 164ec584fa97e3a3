//! skyform: a declarative reconciler for AI compute.
//!
//! Data flows one way: `config` → `model` → `graph` → `plan` (with `state`, refresh and the
//! `optimizer`) → `apply` → `providers` → `state`. See `docs/architecture.md`.

pub mod apply;
pub mod cli;
pub mod config;
pub mod controller;
pub mod convert;
pub mod engine;
pub mod faults;
pub mod graph;
pub mod model;
pub mod optimizer;
pub mod plan;
pub mod providers;
pub mod render;
pub mod runtime;
pub mod serve;
pub mod state;
