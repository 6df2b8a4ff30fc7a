//! `bulwark client`: one operation against a running cluster, or the status of every
//! replica, printed for people or, with `--json`, for scripts.

use crate::common::connect;
use anyhow::{bail, Context as _};
use bulwark_actors::config::ClusterFile;
use bulwark_examples::bank::{Bank, BankOp, BankReply};
use bulwark_examples::kv::{KvOp, KvReply, KvStore};
use clap::Args;
use serde::{Serialize, Serializer};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// What `bulwark client --help` says about its output, after the options.
const OUTPUT_HELP: &str = r#"Output: one line per reply on stdout, for example
  put k: done (no previous value)           put k: done (previous value "v1")
  get k: "v1"                               get k: not found
  append k: done (now 4 bytes)              delete k: done (previous value "v1")
  deposit alice: balance now 100            balance alice: 100
  transfer: alice now 70, bob now 80        refused: insufficient funds (balance 5)
Values that are valid UTF-8 print quoted (with Rust's escapes); other values print as hex
with a 0x prefix. A refusal is the service's answer (the state is unchanged): exit status 0.
An error (no f + 1 matching replies in time, a bad cluster file, an unknown operation...) is
one line on stderr, `error: ...`, and exit status 1. `status` prints a table, one row per
replica that answered, then `no answer from: [ids]` if any did not.

With --json, one JSON object on stdout instead, its keys in this order:
  {"op":"put","key":"k","previous":null}       put and delete: the value replaced or removed
  {"op":"get","key":"k","value":"v1"}          "value": null if the key has none
  {"op":"append","key":"k","len":4}            the value's length now, in bytes
  {"op":"deposit","account":"alice","balance":100}       also withdraw and balance
  {"op":"transfer","from":"alice","to":"bob","from_balance":70,"to_balance":80}
  {"op":"withdraw","account":"alice","refused":"insufficient_funds","balance":5}
  {"error":"no f + 1 matching replies within 10s"}       exit status 1
A value is a JSON string if it is valid UTF-8, else {"hex":"<hex digits>"}. "refused" is one
of key_too_long and value_too_long (with "max", in bytes), insufficient_funds and overflow
(with "balance"), not_owner. `status --json`:
  {"replicas":[{"replica":0,"view":0,"stable":0,"executed":3,"state_digest":"<hex>","diverged_at":null}],"no_answer":[3]}"#;

/// The arguments of `bulwark client`.
#[derive(Debug, Args)]
#[command(after_long_help = OUTPUT_HELP)]
pub(crate) struct ClientArgs {
    /// The cluster file written by keygen.
    #[arg(long)]
    config: PathBuf,
    /// How long to wait for f + 1 matching replies, e.g. 10s.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    timeout: Duration,
    /// Print the reply, or the error, as one JSON object on stdout (formats: --help).
    #[arg(long)]
    json: bool,
    /// Sign as the client whose secret key is in FILE, created on first use. Without it
    /// every run is a new client; the bank lets only the client that opened an account
    /// (by its first deposit) withdraw or transfer from it.
    #[arg(long, value_name = "FILE")]
    key: Option<PathBuf>,
    /// The operation and its arguments.
    #[arg(required = true, num_args = 1..)]
    operation: Vec<String>,
}

/// Runs `bulwark client`. An error is printed here, as one line, and ends the process
/// with exit status 1.
pub(crate) async fn run(args: ClientArgs) -> anyhow::Result<()> {
    let ClientArgs { config, timeout, json, key, operation } = args;
    match client(&config, key.as_deref(), timeout, &operation).await {
        Ok(output) if json => println!("{}", output.json),
        Ok(output) => println!("{}", output.text),
        Err(error) => {
            let message = one_line(&error);
            if json {
                println!("{}", serde_json::json!({ "error": message }));
            } else {
                eprintln!("error: {message}");
            }
            std::process::exit(1);
        }
    }
    Ok(())
}

/// The error and its causes on one line, `context: cause`, leaving out a cause whose words
/// the line already holds (many of the errors here quote their source).
fn one_line(error: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in error.chain() {
        let text = cause.to_string();
        if !line.contains(&text) {
            if !line.is_empty() {
                line.push_str(": ");
            }
            line.push_str(&text);
        }
    }
    line
}

/// What `bulwark client` prints: `text` for people, `json` with `--json`.
struct Output {
    text: String,
    json: String,
}

/// A JSON object whose keys print in the order they were pushed (serde_json's own map
/// sorts them, and `op` first reads better).
#[derive(Default)]
struct Object(Vec<(&'static str, Value)>);

impl Object {
    fn with(mut self, key: &'static str, value: impl Into<Value>) -> Self {
        self.0.push((key, value.into()));
        self
    }

    fn output(self, text: String) -> Output {
        let json = serde_json::to_string(&self).expect("a JSON object of strings and numbers encodes");
        Output { text, json }
    }
}

impl Serialize for Object {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_map(self.0.iter().map(|(key, value)| (key, value)))
    }
}

/// The `status --json` object.
#[derive(Serialize)]
struct StatusJson {
    replicas: Vec<ReplicaJson>,
    no_answer: Vec<u32>,
}

/// One replica's row of `status --json`.
#[derive(Serialize)]
struct ReplicaJson {
    replica: u32,
    view: u64,
    stable: u64,
    executed: u64,
    state_digest: String,
    /// The last stable checkpoint at which the replica's state differed from the quorum's.
    diverged_at: Option<u64>,
}

fn parse_amount(text: &str) -> anyhow::Result<u64> {
    text.parse().with_context(|| format!("{text:?} is not an amount (a whole number)"))
}

async fn client(config: &Path, key: Option<&Path>, timeout: Duration, words: &[String]) -> anyhow::Result<Output> {
    let words: Vec<&str> = words.iter().map(String::as_str).collect();
    // An unknown operation is an error before the cluster file is even read.
    let op = match words.as_slice() {
        ["status"] => None,
        ["put", key, value] => Some(Op::Kv(KvOp::Put { key: key.to_string(), value: value.as_bytes().to_vec() })),
        ["append", key, value] => Some(Op::Kv(KvOp::Append { key: key.to_string(), value: value.as_bytes().to_vec() })),
        ["get", key] => Some(Op::Kv(KvOp::Get { key: key.to_string() })),
        ["delete", key] => Some(Op::Kv(KvOp::Delete { key: key.to_string() })),
        ["deposit", account, amount] => {
            Some(Op::Bank(BankOp::Deposit { account: account.to_string(), amount: parse_amount(amount)? }))
        }
        ["withdraw", account, amount] => {
            Some(Op::Bank(BankOp::Withdraw { account: account.to_string(), amount: parse_amount(amount)? }))
        }
        ["transfer", from, to, amount] => Some(Op::Bank(BankOp::Transfer {
            from: from.to_string(),
            to: to.to_string(),
            amount: parse_amount(amount)?,
        })),
        ["balance", account] => Some(Op::Bank(BankOp::Balance { account: account.to_string() })),
        other => bail!(
            "unknown operation {other:?}; expected one of: put K V | get K | delete K | append K V | \
             deposit A N | withdraw A N | transfer A B N | balance A | status"
        ),
    };
    let file = ClusterFile::load(config)?;
    match op {
        None => status(config, &file, timeout).await,
        Some(Op::Kv(op)) => {
            let client = connect::<KvStore>(config, key, timeout).await?;
            let reply = client.invoke(&op).await?;
            client.close();
            Ok(kv_output(&op, &reply))
        }
        Some(Op::Bank(op)) => {
            let client = connect::<Bank>(config, key, timeout).await?;
            let reply = client.invoke(&op).await?;
            client.close();
            Ok(bank_output(&op, reply))
        }
    }
}

/// An operation of one of the services `bulwark client` speaks.
enum Op {
    Kv(KvOp),
    Bank(BankOp),
}

async fn status(config: &Path, file: &ClusterFile, timeout: Duration) -> anyhow::Result<Output> {
    let client = connect::<KvStore>(config, None, timeout).await?;
    let reports = client.inquire(Duration::from_secs(2)).await?;
    client.close();
    let no_answer: Vec<u32> =
        file.replicas.iter().map(|r| r.id.0).filter(|id| !reports.iter().any(|r| r.replica.0 == *id)).collect();
    let mut text = format!("{:<8} {:>6} {:>8} {:>10}  state digest", "replica", "view", "stable", "executed");
    for report in &reports {
        text.push_str(&format!(
            "\n{:<8} {:>6} {:>8} {:>10}  {}",
            report.replica.0,
            report.view.0,
            report.stable.0,
            report.last_executed.0,
            report.state_digest.to_hex()
        ));
        if let Some(seq) = report.diverged_at {
            text.push_str(&format!(
                "  DIVERGED at checkpoint {}: its state differed from the one 2f + 1 replicas signed \
                 (the service is probably not deterministic)",
                seq.0
            ));
        }
    }
    if !no_answer.is_empty() {
        text.push_str(&format!("\nno answer from: {no_answer:?}"));
    }
    let replicas = reports
        .iter()
        .map(|report| ReplicaJson {
            replica: report.replica.0,
            view: report.view.0,
            stable: report.stable.0,
            executed: report.last_executed.0,
            state_digest: report.state_digest.to_hex(),
            diverged_at: report.diverged_at.map(|seq| seq.0),
        })
        .collect();
    let json = serde_json::to_string(&StatusJson { replicas, no_answer }).expect("the status object encodes");
    Ok(Output { text, json })
}

/// A value for people: quoted if it is UTF-8, else `0x` and hex.
fn value_text(value: &[u8]) -> String {
    match std::str::from_utf8(value) {
        Ok(text) => format!("{text:?}"),
        Err(_) => format!("0x{}", hex(value)),
    }
}

/// A value for scripts: a string if it is UTF-8, else `{"hex": ...}`.
fn value_json(value: &[u8]) -> Value {
    match std::str::from_utf8(value) {
        Ok(text) => Value::from(text),
        Err(_) => serde_json::json!({ "hex": hex(value) }),
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

/// Words and JSON for the store's `reply` to `op`. Every variant is matched by name, so a
/// new one does not compile until it is given words here.
fn kv_output(op: &KvOp, reply: &KvReply) -> Output {
    let name = match op {
        KvOp::Put { .. } => "put",
        KvOp::Get { .. } => "get",
        KvOp::Delete { .. } => "delete",
        KvOp::Append { .. } => "append",
    };
    let key = op.key();
    let head = format!("{name} {key}");
    let json = Object::default().with("op", name).with("key", key);
    match reply {
        KvReply::Value(Some(value)) => {
            json.with("value", value_json(value)).output(format!("{head}: {}", value_text(value)))
        }
        KvReply::Value(None) => json.with("value", Value::Null).output(format!("{head}: not found")),
        KvReply::Done { previous: Some(previous) } => json
            .with("previous", value_json(previous))
            .output(format!("{head}: done (previous value {})", value_text(previous))),
        KvReply::Done { previous: None } => {
            json.with("previous", Value::Null).output(format!("{head}: done (no previous value)"))
        }
        KvReply::Appended { len } => json.with("len", *len).output(format!("{head}: done (now {len} bytes)")),
        KvReply::KeyTooLong { max } => json
            .with("refused", "key_too_long")
            .with("max", *max)
            .output(format!("refused: the key is longer than {max} bytes")),
        KvReply::ValueTooLong { max } => json
            .with("refused", "value_too_long")
            .with("max", *max)
            .output(format!("refused: the value would be longer than {max} bytes")),
    }
}

/// Words and JSON for the bank's `reply` to `op`; like [`kv_output`], no catch-all arm.
fn bank_output(op: &BankOp, reply: BankReply) -> Output {
    let (head, json) = match op {
        BankOp::Deposit { account, .. } => {
            (format!("deposit {account}"), Object::default().with("op", "deposit").with("account", account.as_str()))
        }
        BankOp::Withdraw { account, .. } => {
            (format!("withdraw {account}"), Object::default().with("op", "withdraw").with("account", account.as_str()))
        }
        BankOp::Balance { account } => {
            (format!("balance {account}"), Object::default().with("op", "balance").with("account", account.as_str()))
        }
        BankOp::Transfer { from, to, .. } => (
            "transfer".to_owned(),
            Object::default().with("op", "transfer").with("from", from.as_str()).with("to", to.as_str()),
        ),
    };
    match reply {
        BankReply::Balance(balance) => {
            let text = if matches!(op, BankOp::Balance { .. }) {
                format!("{head}: {balance}")
            } else {
                format!("{head}: balance now {balance}")
            };
            json.with("balance", balance).output(text)
        }
        BankReply::Transferred { from_balance, to_balance } => {
            let text = if let BankOp::Transfer { from, to, .. } = op {
                format!("{head}: {from} now {from_balance}, {to} now {to_balance}")
            } else {
                format!("{head}: paying account now {from_balance}, receiving account now {to_balance}")
            };
            json.with("from_balance", from_balance).with("to_balance", to_balance).output(text)
        }
        BankReply::InsufficientFunds { balance } => json
            .with("refused", "insufficient_funds")
            .with("balance", balance)
            .output(format!("refused: insufficient funds (balance {balance})")),
        BankReply::Overflow { balance } => json
            .with("refused", "overflow")
            .with("balance", balance)
            .output(format!("refused: the receiving account's balance would overflow (balance {balance})")),
        BankReply::NotOwner => json.with("refused", "not_owner").output("refused: not the account's owner".to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(key: &str) -> KvOp {
        KvOp::Put { key: key.to_owned(), value: b"x".to_vec() }
    }

    #[test]
    fn kv_replies_read_as_words_and_json() {
        let done = kv_output(&put("k"), &KvReply::Done { previous: None });
        assert_eq!(done.text, "put k: done (no previous value)");
        assert_eq!(done.json, r#"{"op":"put","key":"k","previous":null}"#);
        let replaced = kv_output(&put("k"), &KvReply::Done { previous: Some(b"v1".to_vec()) });
        assert_eq!(replaced.text, r#"put k: done (previous value "v1")"#);
        assert_eq!(replaced.json, r#"{"op":"put","key":"k","previous":"v1"}"#);
        let get = KvOp::Get { key: "k".to_owned() };
        assert_eq!(kv_output(&get, &KvReply::Value(Some(b"v1".to_vec()))).text, r#"get k: "v1""#);
        assert_eq!(kv_output(&get, &KvReply::Value(None)).text, "get k: not found");
        let binary = kv_output(&get, &KvReply::Value(Some(vec![0xff, 0x00])));
        assert_eq!(binary.text, "get k: 0xff00");
        assert_eq!(binary.json, r#"{"op":"get","key":"k","value":{"hex":"ff00"}}"#);
        let refused = kv_output(&put("k"), &KvReply::KeyTooLong { max: 1024 });
        assert_eq!(refused.text, "refused: the key is longer than 1024 bytes");
        assert_eq!(refused.json, r#"{"op":"put","key":"k","refused":"key_too_long","max":1024}"#);
    }

    #[test]
    fn bank_replies_read_as_words_and_json() {
        let balance = bank_output(&BankOp::Balance { account: "alice".to_owned() }, BankReply::Balance(100));
        assert_eq!(balance.text, "balance alice: 100");
        assert_eq!(balance.json, r#"{"op":"balance","account":"alice","balance":100}"#);
        let transfer = BankOp::Transfer { from: "alice".to_owned(), to: "bob".to_owned(), amount: 30 };
        let moved = bank_output(&transfer, BankReply::Transferred { from_balance: 70, to_balance: 80 });
        assert_eq!(moved.text, "transfer: alice now 70, bob now 80");
        assert_eq!(moved.json, r#"{"op":"transfer","from":"alice","to":"bob","from_balance":70,"to_balance":80}"#);
        let withdraw = BankOp::Withdraw { account: "alice".to_owned(), amount: 10 };
        let short = bank_output(&withdraw, BankReply::InsufficientFunds { balance: 5 });
        assert_eq!(short.text, "refused: insufficient funds (balance 5)");
        assert_eq!(short.json, r#"{"op":"withdraw","account":"alice","refused":"insufficient_funds","balance":5}"#);
        assert_eq!(bank_output(&withdraw, BankReply::NotOwner).text, "refused: not the account's owner");
    }
}
