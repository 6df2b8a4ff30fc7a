//! The correct clients' closed-loop workload: issuing requests up to the configured
//! concurrency and carrying out what the client role answers.

use super::{Endpoint, Event, Simulation};
use crate::ids::ReplicaId;
use crate::messages::VerifiedMessage;
use crate::roles::client::{Client, ClientAction, ClientError, ClientInput};
use crate::roles::Role;
use crate::service::Service;

pub(super) struct ClientNode {
    pub(super) client: Client,
    pub(super) issued: u64,
    pub(super) completed: u64,
    pub(super) timer_generation: u64,
}

impl<S: Service> Simulation<S> {
    pub(super) fn issue(&mut self, client: usize) {
        let node = &self.clients[client];
        let expected = self.config.requests_per_client;
        let mut to_issue = Vec::new();
        let mut issued = node.issued;
        let mut outstanding = node.client.outstanding();
        while issued < expected && outstanding < self.config.client_concurrency {
            let operation = (self.make_operation)(&mut self.rng, client, issued);
            to_issue.push(operation);
            issued += 1;
            outstanding += 1;
        }
        for operation in to_issue {
            let bytes = rmp_serde::to_vec(&operation).expect("operations encode");
            let issued_operation = operation.clone();
            let actions = self.clients[client]
                .client
                .handle(ClientInput::Invoke { operation: bytes, read_only: false }, self.now);
            match actions.first() {
                // The oldest outstanding request holds the window: wait for it. The drawn
                // operation is discarded, deterministically.
                Some(ClientAction::Rejected(ClientError::WindowFull { .. })) => break,
                Some(ClientAction::Rejected(error)) => panic!("simulated client misconfigured: {error}"),
                _ => {
                    self.clients[client].issued += 1;
                    if let Some(ClientAction::Issued { timestamp }) = actions.first() {
                        self.note_issued(client, *timestamp, issued_operation);
                    }
                    self.client_actions(client, actions);
                }
            }
        }
    }

    pub(super) fn client_actions(&mut self, client: usize, actions: Vec<ClientAction>) {
        let mut completed_any = false;
        for action in actions {
            match action {
                ClientAction::Send { to, request } => {
                    let payload = self.encode(&VerifiedMessage::Request(request));
                    self.send(Endpoint::Client(client), Endpoint::Replica(to), payload);
                }
                ClientAction::Broadcast { request } => {
                    let payload = self.encode(&VerifiedMessage::Request(request));
                    let members: Vec<ReplicaId> = self.nodes.keys().copied().collect();
                    for to in members {
                        self.send(Endpoint::Client(client), Endpoint::Replica(to), payload.clone());
                    }
                }
                ClientAction::SetTimer { at } => {
                    let node = &mut self.clients[client];
                    node.timer_generation += 1;
                    let generation = node.timer_generation;
                    self.schedule(at.max(self.now), Event::ClientTimer { client, generation });
                }
                ClientAction::Issued { .. } | ClientAction::Rejected(_) => {}
                ClientAction::Completed { timestamp, result } => {
                    let id = self.clients[client].client.id();
                    self.checker.observe_accepted(id, timestamp, &result);
                    self.note_completed(client, timestamp, &result);
                    self.clients[client].completed += 1;
                    completed_any = true;
                }
            }
        }
        if completed_any {
            self.issue(client);
        }
    }
}
