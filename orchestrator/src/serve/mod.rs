//! The serving substrate that `links` and `runtime` both stand on:
//! connection workers ([`workers`]) within one connection budget
//! ([`admission`]), per-worker timers ([`timeouts`]), draining
//! ([`drain`]), the yield that keeps one connection from starving the others
//! ([`gate`]), a watchdog per connection that closes the silent, the idle
//! and those that stop reading ([`idle`]), and HTTP listeners
//! ([`listener`]) that serve a [`listener::Handler`] without knowing what it
//! routes to.

pub mod admission;
pub mod drain;
pub mod gate;
pub mod idle;
pub mod listener;
pub mod timeouts;
pub mod workers;
