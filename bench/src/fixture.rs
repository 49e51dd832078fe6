//! The names the harness, the simulator's demo apps and the wxauth config it generates agree
//! on: the apps, the client, the users, the callback host.

/// The simulator's demo official-account app, which wxauth's app `mp` is configured as.
pub const MP_APPID: &str = "wxd0000000000000a1";
pub const MP_SECRET: &str = "demo-mp-secret";
pub const APP: &str = "mp";
/// The simulator's demo mini program, which wxauth's app `mini` is configured as.
pub const MINI_APPID: &str = "wxd0000000000000d4";
pub const MINI_SECRET: &str = "demo-mini-secret";
/// The two simulator users whose tokens the per-user RPCs read.
pub const USERS: [&str; 2] = ["alice", "bob"];
pub const CLIENT_KEY: &str = "bench-client-key";
pub const RETURN_URL: &str = "https://passport.example.com/login/callback?from=bench";
/// A product's CSRF state, 32 characters as a typical session-bound value.
pub const CALLER_STATE: &str = "Ks8dP2qLx0Vn4RtY7uWb1ZcE5gHj9mAo";
/// The start of the code WeChat would append at the callback: the relay binds each code to
/// its flow, so each callback carries its own (this prefix and the flow id).
pub const RELAY_CODE: &str = "061Bench";
pub const CALLBACK_HOST: &str = "auth.wxauth.bench";
