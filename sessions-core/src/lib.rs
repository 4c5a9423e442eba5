//! The pure logic of `ngx_http_sessions_module`: no NGINX types, no I/O (but the state
//! file's atomic write), time passed in.
//!
//! - [`cookie`]: finding our cookie in `Cookie` headers, the signed value, `Set-Cookie`.
//! - [`data`]: session data (`sessions_set`) and what a response asks of its session.
//! - [`http`]: Fetch Metadata, `Cache-Control` and `Cookie` header decisions.
//! - [`session`]: records, timeouts, binding and renewal as a state machine.
//! - [`table`]: the shared-memory table's layout and algorithm (over plain slices).
//! - [`metrics`]: per-worker counters and their Prometheus text exposition.
//! - [`redis_flow`]: the algorithm against Redis, as commands and replies.
//! - [`redis_record`]: Redis key names and the compact session value.
//! - [`redis_commit`]: a response's data changes, renewal and destruction against Redis.
//! - [`redis_url`]: the `sessions_redis` URL.
//! - [`sentinel`]: finding the Redis master through Sentinel.
//! - [`state`]: the state file that carries a zone across restarts.

pub mod cookie;
pub mod data;
pub mod http;
pub mod metrics;
pub mod redis_commit;
pub mod redis_flow;
pub mod redis_record;
pub mod redis_url;
pub mod sentinel;
pub mod session;
pub mod state;
pub mod table;
