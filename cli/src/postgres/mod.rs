//! A throwaway PostgreSQL and an app holding a connection pool: what
//! `rotor demo --postgres` runs, and what the rotation tests' rig
//! (`tests/src/postgres.rs`) runs too, so the demo and the tests exercise
//! the same app.
//!
//! - [`cluster`]: PostgreSQL's server binaries found on this machine, and a
//!   cluster in a temporary directory on a free loopback port
//!   (`initdb`, then `postgres`; as the `postgres` user when run as root,
//!   since PostgreSQL refuses root).
//! - [`pool`]: the app: reads its credential file (the JSON secret or a
//!   connection string), keeps a pool of connections, queries in a loop,
//!   and reconnects the pool when the file changes or it is told to reload.

pub mod cluster;
pub mod pool;
