//! `seats`: a complete program replicating a service of its own with Bulwark, written as
//! a user would write one: the service (seat reservations for one show), a replica process
//! and a client, in one file, on the library entry points alone.
//!
//! ```text
//! bulwark keygen --replicas 4 --out cluster            # the cluster file and keys
//! seats replica --config cluster/cluster.toml --id 0   # four times, ids 0..3
//! seats client --config cluster/cluster.toml --key alice.key reserve 12
//! seats client --config cluster/cluster.toml --key bob.key reserve-any
//! seats client --config cluster/cluster.toml --key alice.key cancel 12
//! seats client --config cluster/cluster.toml show
//! ```
//!
//! What the service uses of its [`ExecutionContext`]: the caller (only the holder of a seat
//! may cancel or confirm it, whatever the operation says), the agreed time (an unconfirmed
//! hold lapses after [`HOLD_S`]), and the shared randomness (`reserve-any` picks a free
//! seat at random, the same one at every replica).

use anyhow::Context as _;
use bulwark_actors::client::ClientOptions;
use bulwark_actors::launch::{connect, ReplicaBuilder};
use bulwark_crypto::KeyPair;
use bulwark_framework::service::{Caller, ExecutionContext, Service, ServiceError};
use bulwark_framework::{ClientId, ReplicaId};
use clap::{Parser, Subcommand};
use rand::Rng;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Seats in the hall: 1..=SEATS.
const SEATS: u32 = 100;
/// How long a reservation holds before it must be confirmed.
const HOLD_S: u64 = 600;

/// What a client asks of the hall.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
enum SeatOp {
    /// Hold `seat` for the caller for [`HOLD_S`] seconds.
    Reserve { seat: u32 },
    /// Hold a free seat chosen at random.
    ReserveAny,
    /// Make the caller's hold on `seat` permanent.
    Confirm { seat: u32 },
    /// Give `seat` back; only its holder may.
    Cancel { seat: u32 },
    /// Every taken seat (read-only).
    Show,
}

/// The hall's answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
enum SeatReply {
    Held {
        seat: u32,
        until_unix_s: u64,
    },
    Confirmed {
        seat: u32,
    },
    Cancelled {
        seat: u32,
    },
    Taken {
        seat: u32,
    },
    NotYours {
        seat: u32,
    },
    NoSuchSeat {
        seat: u32,
    },
    SoldOut,
    /// Taken seats: number, holder, and whether confirmed.
    Plan(Vec<(u32, ClientId, bool)>),
}

/// One taken seat.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Booking {
    holder: ClientId,
    /// When an unconfirmed hold lapses (agreed time, µs since the Unix epoch); `None` once
    /// confirmed.
    lapses_at_us: Option<u64>,
}

/// The replicated service: who holds which seat. A `BTreeMap`, so snapshots are canonical.
#[derive(Debug, Default)]
struct Hall {
    bookings: BTreeMap<u32, Booking>,
}

impl Hall {
    /// Whether `seat` is free at `now_us` (a lapsed hold frees it).
    fn free(&self, seat: u32, now_us: u64) -> bool {
        match self.bookings.get(&seat) {
            None => true,
            Some(booking) => booking.lapses_at_us.is_some_and(|at| at <= now_us),
        }
    }

    fn hold(&mut self, seat: u32, holder: ClientId, now_us: u64) -> SeatReply {
        let until = now_us + HOLD_S * 1_000_000;
        self.bookings.insert(seat, Booking { holder, lapses_at_us: Some(until) });
        SeatReply::Held { seat, until_unix_s: until / 1_000_000 }
    }
}

impl Service for Hall {
    type Op = SeatOp;
    type Reply = SeatReply;

    fn execute(&mut self, op: &SeatOp, context: &mut ExecutionContext) -> SeatReply {
        let (caller, now_us) = (context.caller().id, context.time_us());
        match *op {
            SeatOp::Reserve { seat } if !(1..=SEATS).contains(&seat) => SeatReply::NoSuchSeat { seat },
            SeatOp::Reserve { seat } if !self.free(seat, now_us) => SeatReply::Taken { seat },
            SeatOp::Reserve { seat } => self.hold(seat, caller, now_us),
            SeatOp::ReserveAny => {
                let free: Vec<u32> = (1..=SEATS).filter(|&seat| self.free(seat, now_us)).collect();
                if free.is_empty() {
                    return SeatReply::SoldOut;
                }
                let seat = free[context.rng().gen_range(0..free.len())];
                self.hold(seat, caller, now_us)
            }
            SeatOp::Confirm { seat } | SeatOp::Cancel { seat } => {
                let holds = self.bookings.get(&seat).is_some_and(|booking| booking.holder == caller);
                if !holds || self.free(seat, now_us) {
                    return SeatReply::NotYours { seat };
                }
                if matches!(op, SeatOp::Cancel { .. }) {
                    self.bookings.remove(&seat);
                    return SeatReply::Cancelled { seat };
                }
                self.bookings.get_mut(&seat).expect("checked above").lapses_at_us = None;
                SeatReply::Confirmed { seat }
            }
            SeatOp::Show => self.plan(),
        }
    }

    fn query(&self, op: &SeatOp, _: &Caller) -> Option<SeatReply> {
        matches!(op, SeatOp::Show).then(|| self.plan())
    }

    fn snapshot(&self) -> Vec<u8> {
        rmp_serde::to_vec(&self.bookings).expect("a map of seats encodes")
    }

    fn restore(&mut self, snapshot: &[u8]) -> Result<(), ServiceError> {
        self.bookings = rmp_serde::from_slice(snapshot).map_err(|e| ServiceError(format!("not a seat plan: {e}")))?;
        Ok(())
    }
}

impl Hall {
    fn plan(&self) -> SeatReply {
        SeatReply::Plan(self.bookings.iter().map(|(&seat, b)| (seat, b.holder, b.lapses_at_us.is_none())).collect())
    }
}

/// Seat reservations for one show, replicated with Bulwark.
#[derive(Debug, Parser)]
#[command(name = "seats")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run one replica of the hall until interrupted.
    Replica {
        /// The cluster file `bulwark keygen` wrote.
        #[arg(long)]
        config: PathBuf,
        /// This replica's id (its key is replica-<id>.key beside the cluster file).
        #[arg(long)]
        id: u32,
        /// Keep the replica's durable store in this directory.
        #[arg(long)]
        data_dir: Option<PathBuf>,
    },
    /// One request: reserve SEAT | reserve-any | confirm SEAT | cancel SEAT | show.
    Client {
        #[arg(long)]
        config: PathBuf,
        /// Your secret key file, created on first use: you are who signs with it.
        #[arg(long)]
        key: Option<PathBuf>,
        #[arg(required = true, num_args = 1..)]
        request: Vec<String>,
    },
}

#[actix_rt::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt().with_env_filter(tracing_subscriber::EnvFilter::from_default_env()).init();
    match Cli::parse().command {
        Command::Replica { config, id, data_dir } => {
            let mut builder = ReplicaBuilder::new(config, ReplicaId(id));
            if let Some(dir) = data_dir {
                builder = builder.data_dir(dir);
            }
            let replica = builder.start(Hall::default()).await?;
            eprintln!("seats replica {id} listening on {}", replica.address);
            Ok(replica.run_until_interrupted().await?)
        }
        Command::Client { config, key, request } => {
            let op = parse(&request)?;
            let key = key.as_deref().map(key_of).transpose()?;
            let options = ClientOptions { timeout: Duration::from_secs(10), ..ClientOptions::default() };
            let client = connect::<Hall>(&config, key, options).await?;
            let reply = if op == SeatOp::Show { client.query(&op).await? } else { client.invoke(&op).await? };
            println!("{}", describe(&reply));
            Ok(())
        }
    }
}

fn parse(words: &[String]) -> anyhow::Result<SeatOp> {
    let seat = |text: &str| text.parse::<u32>().with_context(|| format!("{text:?} is not a seat number"));
    let words: Vec<&str> = words.iter().map(String::as_str).collect();
    Ok(match words.as_slice() {
        ["reserve", seat_number] => SeatOp::Reserve { seat: seat(seat_number)? },
        ["reserve-any"] => SeatOp::ReserveAny,
        ["confirm", seat_number] => SeatOp::Confirm { seat: seat(seat_number)? },
        ["cancel", seat_number] => SeatOp::Cancel { seat: seat(seat_number)? },
        ["show"] => SeatOp::Show,
        other => {
            anyhow::bail!("unknown request {other:?}: reserve SEAT | reserve-any | confirm SEAT | cancel SEAT | show")
        }
    })
}

/// The key in `path`, made there first if the file does not exist.
fn key_of(path: &Path) -> anyhow::Result<KeyPair> {
    if path.exists() {
        return Ok(KeyPair::load(path)?);
    }
    let key = KeyPair::generate(&mut rand::rngs::OsRng);
    key.save(path)?;
    Ok(key)
}

fn describe(reply: &SeatReply) -> String {
    match reply {
        SeatReply::Held { seat, until_unix_s } => format!("seat {seat}: held for you until {until_unix_s} (Unix time)"),
        SeatReply::Confirmed { seat } => format!("seat {seat}: confirmed"),
        SeatReply::Cancelled { seat } => format!("seat {seat}: cancelled"),
        SeatReply::Taken { seat } => format!("seat {seat}: taken"),
        SeatReply::NotYours { seat } => format!("seat {seat}: not held by you"),
        SeatReply::NoSuchSeat { seat } => format!("seat {seat}: no such seat (1..={SEATS})"),
        SeatReply::SoldOut => "sold out".to_string(),
        SeatReply::Plan(seats) => {
            let taken: Vec<String> = seats
                .iter()
                .map(|(seat, _, confirmed)| format!("{seat}{}", if *confirmed { "" } else { "?" }))
                .collect();
            format!("{} taken: {}", seats.len(), taken.join(" "))
        }
    }
}
