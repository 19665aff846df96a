//! End-to-end tests: each runs the real `orchestrator` binary.

mod browser;
mod cli;
mod clients;
mod dashboard;
mod grpc;
mod guide;
mod hello;
mod hosts;
mod image;
mod inputs;
mod kubernetes;
mod libraries;
mod load;
mod logs;
mod metrics;
mod nats;
mod netns;
mod plugins;
mod process;
mod queue;
mod reload;
mod rpc;
mod shutdown;
mod start;
mod traces;
mod validation;
