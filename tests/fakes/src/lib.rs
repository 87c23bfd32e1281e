//! Test doubles that speak the real protocols over real sockets on 127.0.0.1:0.
//! They are as strict and as quirky as the services they stand for (see
//! ../shared/notes/realtime.md): a fake kinder than the real service hides bugs.
pub mod memory;
pub mod postgres;
pub mod deepseek;
pub mod realtime;
pub mod rooms;
