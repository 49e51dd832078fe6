//! Integration tests: wxauth on port 0 against a private redis-server (and the in-memory
//! store where it applies) and the WeChat simulator, through a real gRPC client and real HTTP.

mod accounts;
mod authorize;
mod breaker;
mod browser;
mod chaos;
mod citations;
mod cli;
mod cluster;
mod concurrency;
mod consent;
mod docs;
mod exchange;
mod flood;
mod helpers;
mod hostile;
mod limits;
mod listeners;
mod maxmemory;
mod mini;
mod mobile;
mod monitoring;
mod observability;
mod operations;
mod polyglot;
mod proxy;
mod push;
mod reach;
mod refresh_wait;
mod relay;
mod rooms;
mod sealing;
mod sentinel;
mod tls;
mod tokens;
mod wx_login;
