//! All black-box tests: one binary, real HTTP, real PostgreSQL.

mod helpers;

mod bus;
mod embedded;
mod events;
mod foundation;
mod hardening;
mod hardening_reads;
mod history;
mod openapi;
mod reads;
mod runs;
mod scripts;
mod security;
mod smoke;
mod stream;
