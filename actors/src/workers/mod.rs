//! Workers: the process-wide tasks behind the actors (the variable writer,
//! the event appender, the LISTEN connection) and the command dispatchers.

pub mod appender;
pub mod dispatcher;
pub mod listener;
pub mod var_writer;
