//! `bulwark client`: one operation against a running cluster, or the status of every
//! replica.

use crate::common::connect;
use anyhow::{bail, Context as _};
use bulwark_actors::config::ClusterFile;
use bulwark_examples::bank::{Bank, BankOp};
use bulwark_examples::kv::{KvOp, KvStore};
use clap::Args;
use std::path::PathBuf;
use std::time::Duration;

/// The arguments of `bulwark client`.
#[derive(Debug, Args)]
pub(crate) struct ClientArgs {
    /// The cluster file written by keygen.
    #[arg(long)]
    config: PathBuf,
    /// How long to wait for f + 1 matching replies, e.g. 10s.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    timeout: Duration,
    /// The operation and its arguments.
    #[arg(required = true, num_args = 1..)]
    operation: Vec<String>,
}

/// Runs `bulwark client`.
pub(crate) async fn run(args: ClientArgs) -> anyhow::Result<()> {
    let ClientArgs { config, timeout, operation } = args;
    client(config, timeout, operation).await
}

fn parse_amount(text: &str) -> anyhow::Result<u64> {
    text.parse().with_context(|| format!("{text:?} is not an amount (a whole number)"))
}

async fn client(config: PathBuf, timeout: Duration, words: Vec<String>) -> anyhow::Result<()> {
    let file = ClusterFile::load(&config)?;
    let words: Vec<&str> = words.iter().map(String::as_str).collect();
    match words.as_slice() {
        ["status"] => {
            let client = connect::<KvStore>(&file, timeout).await?;
            let reports = client.inquire(Duration::from_secs(2)).await?;
            println!("{:<8} {:>6} {:>8} {:>10}  state digest", "replica", "view", "stable", "executed");
            for report in &reports {
                println!(
                    "{:<8} {:>6} {:>8} {:>10}  {}",
                    report.replica.0,
                    report.view.0,
                    report.stable.0,
                    report.last_executed.0,
                    report.state_digest.to_hex()
                );
            }
            let silent: Vec<u32> =
                file.replicas.iter().map(|r| r.id.0).filter(|id| !reports.iter().any(|r| r.replica.0 == *id)).collect();
            if !silent.is_empty() {
                println!("no answer from: {silent:?}");
            }
            Ok(())
        }
        ["put", key, value] => {
            kv(&file, timeout, KvOp::Put { key: key.to_string(), value: value.as_bytes().to_vec() }).await
        }
        ["append", key, value] => {
            kv(&file, timeout, KvOp::Append { key: key.to_string(), value: value.as_bytes().to_vec() }).await
        }
        ["get", key] => kv(&file, timeout, KvOp::Get { key: key.to_string() }).await,
        ["delete", key] => kv(&file, timeout, KvOp::Delete { key: key.to_string() }).await,
        ["deposit", account, amount] => {
            bank(&file, timeout, BankOp::Deposit { account: account.to_string(), amount: parse_amount(amount)? }).await
        }
        ["withdraw", account, amount] => {
            bank(&file, timeout, BankOp::Withdraw { account: account.to_string(), amount: parse_amount(amount)? }).await
        }
        ["transfer", from, to, amount] => {
            let op = BankOp::Transfer { from: from.to_string(), to: to.to_string(), amount: parse_amount(amount)? };
            bank(&file, timeout, op).await
        }
        ["balance", account] => bank(&file, timeout, BankOp::Balance { account: account.to_string() }).await,
        other => bail!(
            "unknown operation {other:?}; expected one of: put K V | get K | delete K | append K V | \
             deposit A N | withdraw A N | transfer A B N | balance A | status"
        ),
    }
}

async fn kv(file: &ClusterFile, timeout: Duration, op: KvOp) -> anyhow::Result<()> {
    let client = connect::<KvStore>(file, timeout).await?;
    let reply = client.invoke(&op).await?;
    match reply {
        bulwark_examples::kv::KvReply::Value(Some(value)) => {
            println!("{}", String::from_utf8_lossy(&value))
        }
        bulwark_examples::kv::KvReply::Value(None) => println!("(not found)"),
        other => println!("{other:?}"),
    }
    client.close();
    Ok(())
}

async fn bank(file: &ClusterFile, timeout: Duration, op: BankOp) -> anyhow::Result<()> {
    let client = connect::<Bank>(file, timeout).await?;
    println!("{:?}", client.invoke(&op).await?);
    client.close();
    Ok(())
}
