//! placeholder
mod nats_common;
