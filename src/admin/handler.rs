//! pgwire glue: simple queries run console commands; the extended protocol is refused.

use std::fmt::Debug;
use std::sync::Arc;

use async_trait::async_trait;
use futures::Sink;
use pgwire::api::auth::StartupHandler;
use pgwire::api::portal::Portal;
use pgwire::api::query::{ExtendedQueryHandler, SimpleQueryHandler};
use pgwire::api::results::Response;
use pgwire::api::stmt::NoopQueryParser;
use pgwire::api::store::PortalStore;
use pgwire::api::{ClientInfo, ClientPortalStore, PgWireServerHandlers};
use pgwire::error::{ErrorInfo, PgWireError, PgWireResult, SEVERITY_ERROR};
use pgwire::messages::extendedquery::Parse;
use pgwire::messages::PgWireBackendMessage;

use super::auth::{AdminAuth, Transport};
use super::cmd::{split_statements, Command};
use super::reply::into_response;
use crate::proxy::Shared;

/// Everything one listener needs to serve a console connection.
pub(super) struct Console {
    startup: Arc<AdminAuth>,
    queries: Arc<ConsoleQueries>,
    extended: Arc<SimpleQueriesOnly>,
}

impl Console {
    pub(super) fn new(startup: AdminAuth, queries: ConsoleQueries) -> Arc<Self> {
        Arc::new(Self { startup: Arc::new(startup), queries: Arc::new(queries), extended: Arc::new(SimpleQueriesOnly) })
    }
}

impl PgWireServerHandlers for Console {
    fn simple_query_handler(&self) -> Arc<impl SimpleQueryHandler> {
        self.queries.clone()
    }

    fn extended_query_handler(&self) -> Arc<impl ExtendedQueryHandler> {
        self.extended.clone()
    }

    fn startup_handler(&self) -> Arc<impl StartupHandler> {
        self.startup.clone()
    }
}

pub(super) struct ConsoleQueries {
    shared: Arc<Shared>,
    transport: Transport,
}

impl ConsoleQueries {
    pub(super) fn new(shared: Arc<Shared>, transport: Transport) -> Self {
        Self { shared, transport }
    }

    /// Who sent a command, for the log (pgwire gives Unix-socket clients a dummy address).
    fn peer(&self, socket_addr: std::net::SocketAddr) -> String {
        match self.transport {
            Transport::Tcp => socket_addr.to_string(),
            Transport::UnixSocket => "unix socket".into(),
        }
    }
}

#[async_trait]
impl SimpleQueryHandler for ConsoleQueries {
    async fn do_query<C>(&self, client: &mut C, query: &str) -> PgWireResult<Vec<Response>>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let peer = self.peer(client.socket_addr());
        let mut responses = Vec::new();
        for statement in split_statements(query) {
            let result = match Command::parse(&statement) {
                Ok(command) => {
                    if command.changes_state() {
                        tracing::info!(%peer, command = %statement, "admin command");
                    } else {
                        tracing::debug!(%peer, command = %statement, "admin command");
                    }
                    command.apply(&self.shared).await
                }
                Err(e) => Err(e),
            };
            if let Err(e) = &result {
                tracing::debug!(%peer, command = %statement, error = %e, "admin command failed");
            }
            // Like Postgres, an error ends a multi-statement query.
            let failed = result.is_err();
            responses.push(into_response(result)?);
            if failed {
                break;
            }
        }
        Ok(responses)
    }
}

/// Console commands have no parameters to bind; the extended protocol only gets an error.
pub(super) struct SimpleQueriesOnly;

fn simple_queries_only() -> PgWireError {
    PgWireError::UserError(Box::new(ErrorInfo::new(
        SEVERITY_ERROR.to_owned(),
        "0A000".to_owned(),
        "the pgcutover admin console accepts only simple queries (psql, or simple_query in a driver), not the extended query protocol".to_owned(),
    )))
}

#[async_trait]
impl ExtendedQueryHandler for SimpleQueriesOnly {
    type Statement = String;
    type QueryParser = NoopQueryParser;

    fn query_parser(&self) -> Arc<Self::QueryParser> {
        Arc::new(NoopQueryParser)
    }

    async fn on_parse<C>(&self, _client: &mut C, _message: Parse) -> PgWireResult<()>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore<Statement = Self::Statement>,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        Err(simple_queries_only())
    }

    async fn do_query<C>(&self, _client: &mut C, _portal: &Portal<Self::Statement>, _max_rows: usize) -> PgWireResult<Response>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore<Statement = Self::Statement>,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        Err(simple_queries_only())
    }
}
