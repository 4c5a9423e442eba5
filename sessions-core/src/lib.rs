//! The pure logic of `ngx_http_sessions_module`: no NGINX types, no I/O, time passed in.
//!
//! - [`cookie`]: finding our cookie in `Cookie` headers, the signed value, `Set-Cookie`.
//! - [`session`]: records, timeouts, binding and renewal as a state machine.
//! - [`redis_url`]: the `sessions_redis` URL.

pub mod cookie;
pub mod redis_flow;
pub mod redis_url;
pub mod session;
