//! The proxy's own catalog queries to the servers, over tokio-postgres.
