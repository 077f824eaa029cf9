//! A lab agent's answers as the tests read them: the CLI's `--json` output parsed into the
//! control protocol's own types, so a test reads fields, not JSON keys. Going through the CLI
//! (as an operator would) also checks that its JSON is exactly those types.

use lb_agent::{
    overrides::Overrides,
    protocol::{FlowView, GroupView, StatsView, StatusView, TargetView},
};
use serde::de::DeserializeOwned;
use xtask::agent::LabAgent;

/// Typed reads of a running agent; each panics, naming the command, if the agent does not
/// answer or its JSON is not the protocol's type.
pub trait AgentViews {
    /// `targets list --json`: every target of every group.
    fn targets(&self) -> Vec<TargetView>;
    /// `groups list --json`.
    fn groups(&self) -> Vec<GroupView>;
    /// `stats --json`.
    fn stats(&self) -> StatsView;
    /// `flows --json`: the connection table.
    fn flows(&self) -> Vec<FlowView>;
    /// `status --json`.
    fn status(&self) -> StatusView;
    /// `overrides list --json`: the API's changes on top of the config file.
    fn overrides(&self) -> Overrides;
}

impl AgentViews for LabAgent {
    fn targets(&self) -> Vec<TargetView> {
        read(self, &["targets", "list", "--json"])
    }

    fn groups(&self) -> Vec<GroupView> {
        read(self, &["groups", "list", "--json"])
    }

    fn stats(&self) -> StatsView {
        read(self, &["stats", "--json"])
    }

    fn flows(&self) -> Vec<FlowView> {
        read(self, &["flows", "--json"])
    }

    fn status(&self) -> StatusView {
        read(self, &["status", "--json"])
    }

    fn overrides(&self) -> Overrides {
        read(self, &["overrides", "list", "--json"])
    }
}

/// Runs `lb-agent ARGS` against the agent and parses its output as a `T`.
fn read<T: DeserializeOwned>(agent: &LabAgent, args: &[&str]) -> T {
    let command = args.join(" ");
    let out = agent
        .cli(args)
        .unwrap_or_else(|e| panic!("lb-agent {command}: {e:#}"));
    serde_json::from_str(&out).unwrap_or_else(|e| {
        panic!(
            "lb-agent {command} printed no {}: {e}\n{out}",
            std::any::type_name::<T>()
        )
    })
}
