//! Lamport's toy bank: accounts holding balances, with deposits, withdrawals and
//! transfers.
//!
//! The bank is the classic example for replicated state machines because it has an
//! invariant that a replication bug breaks visibly: transfers move money but never create
//! or destroy it, and no balance ever goes negative. A replica that executed operations
//! in a different order, or twice, ends with different balances and a different state
//! digest.
//!
//! Every operation either takes full effect or, if refused, leaves the state exactly as
//! it was: a refusal is an ordinary reply, not an error, because every correct replica
//! refuses the same operation in the same state.
//!
//! Money leaves an account only at its owner's request: the client whose first deposit
//! opened it. The owner is the request's signer as every replica checked it
//! ([`ExecutionContext::caller`]), never a name written into the operation.

use std::collections::BTreeMap;

use bulwark_framework::service::{Caller, ExecutionContext, Service, ServiceError};
use bulwark_framework::ClientId;
use serde::{Deserialize, Serialize};

/// An operation on the bank. Accounts are named by arbitrary strings and need not be
/// opened: an account nobody has deposited into has balance zero.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum BankOp {
    /// Adds `amount` to `account`; the first deposit into an account nobody owns makes the
    /// caller its owner. Answers [`BankReply::Balance`] with the new balance, or
    /// [`BankReply::Overflow`].
    Deposit { account: String, amount: u64 },
    /// Takes `amount` from `account`, which the caller must own. Answers
    /// [`BankReply::Balance`] with the new balance, or [`BankReply::NotOwner`] (checked
    /// first) or [`BankReply::InsufficientFunds`].
    Withdraw { account: String, amount: u64 },
    /// Moves `amount` from `from`, which the caller must own, to `to`. Answers
    /// [`BankReply::Transferred`], or [`BankReply::NotOwner`], [`BankReply::InsufficientFunds`]
    /// or [`BankReply::Overflow`], checked in that order.
    Transfer { from: String, to: String, amount: u64 },
    /// Reads `account`'s balance. Read-only: can be answered by [`Service::query`].
    /// Answers [`BankReply::Balance`].
    Balance { account: String },
}

impl BankOp {
    /// Whether the operation leaves the state unchanged, and so may skip ordering.
    pub fn is_read_only(&self) -> bool {
        matches!(self, BankOp::Balance { .. })
    }
}

/// The bank's answer to a [`BankOp`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum BankReply {
    /// The account's balance: after the deposit or withdrawal, or the current balance
    /// for [`BankOp::Balance`].
    Balance(u64),
    /// The transfer took effect; these are the two accounts' balances after it. For a
    /// transfer to oneself the two are equal and unchanged.
    Transferred { from_balance: u64, to_balance: u64 },
    /// The withdrawal or transfer was refused, and the state is unchanged, because the
    /// paying account holds only `balance`.
    InsufficientFunds { balance: u64 },
    /// The deposit or transfer was refused, and the state is unchanged, because the
    /// receiving account's `balance` plus the amount would not fit in a `u64`.
    Overflow { balance: u64 },
    /// The withdrawal or transfer was refused, and the state is unchanged, because the
    /// caller does not own the paying account.
    NotOwner,
}

/// Lamport's toy bank, replicated by Bulwark.
///
/// Only accounts with a non-zero balance are stored. An account at zero and an account
/// never used behave identically, so storing one but not the other would let two
/// replicas that agree on every balance disagree on the state digest.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Bank {
    balances: BTreeMap<String, u64>,
    /// Who may take money out of each account: the client whose deposit opened it.
    owners: BTreeMap<String, ClientId>,
}

/// The bank's snapshot: balances and owners, both in key order.
type BankImage = (BTreeMap<String, u64>, BTreeMap<String, ClientId>);

impl Bank {
    /// A bank where every balance is zero.
    pub fn new() -> Self {
        Self::default()
    }

    /// `account`'s balance. For local inspection (tests, tools); clients read through
    /// [`BankOp::Balance`].
    pub fn balance(&self, account: &str) -> u64 {
        self.balances.get(account).copied().unwrap_or(0)
    }

    /// The sum of all balances, or `None` if it does not fit in a `u64` (each account is
    /// bounded, the total is not). Transfers never change it.
    pub fn total(&self) -> Option<u64> {
        self.balances.values().try_fold(0u64, |sum, &balance| sum.checked_add(balance))
    }

    /// Sets `account`'s balance, keeping zero balances out of the map.
    fn set(&mut self, account: &str, balance: u64) {
        if balance == 0 {
            self.balances.remove(account);
        } else if let Some(stored) = self.balances.get_mut(account) {
            *stored = balance;
        } else {
            self.balances.insert(account.to_owned(), balance);
        }
    }

    /// The client allowed to take money out of `account`, if anyone is.
    pub fn owner(&self, account: &str) -> Option<ClientId> {
        self.owners.get(account).copied()
    }

    fn owns(&self, caller: &Caller, account: &str) -> bool {
        self.owner(account) == Some(caller.id)
    }

    fn deposit(&mut self, caller: &Caller, account: &str, amount: u64) -> BankReply {
        let balance = self.balance(account);
        match balance.checked_add(amount) {
            Some(new) => {
                self.set(account, new);
                if amount > 0 && !self.owners.contains_key(account) {
                    self.owners.insert(account.to_owned(), caller.id);
                }
                BankReply::Balance(new)
            }
            None => BankReply::Overflow { balance },
        }
    }

    fn withdraw(&mut self, account: &str, amount: u64) -> BankReply {
        let balance = self.balance(account);
        match balance.checked_sub(amount) {
            Some(new) => {
                self.set(account, new);
                BankReply::Balance(new)
            }
            None => BankReply::InsufficientFunds { balance },
        }
    }

    fn transfer(&mut self, from: &str, to: &str, amount: u64) -> BankReply {
        let from_balance = self.balance(from);
        // Funds are checked even for a transfer to oneself: a payment the payer could
        // not make to anyone else should not succeed just because it goes nowhere.
        let Some(new_from) = from_balance.checked_sub(amount) else {
            return BankReply::InsufficientFunds { balance: from_balance };
        };
        if from == to {
            return BankReply::Transferred { from_balance, to_balance: from_balance };
        }
        let to_balance = self.balance(to);
        let Some(new_to) = to_balance.checked_add(amount) else {
            return BankReply::Overflow { balance: to_balance };
        };
        // Both checks passed: only now change anything, so a refusal changes nothing.
        self.set(from, new_from);
        self.set(to, new_to);
        BankReply::Transferred { from_balance: new_from, to_balance: new_to }
    }
}

impl Service for Bank {
    type Op = BankOp;
    type Reply = BankReply;

    fn execute(&mut self, op: &BankOp, context: &mut ExecutionContext) -> BankReply {
        let caller = *context.caller();
        match op {
            BankOp::Deposit { account, amount } => self.deposit(&caller, account, *amount),
            BankOp::Withdraw { account, .. } | BankOp::Transfer { from: account, .. }
                if !self.owns(&caller, account) =>
            {
                BankReply::NotOwner
            }
            BankOp::Withdraw { account, amount } => self.withdraw(account, *amount),
            BankOp::Transfer { from, to, amount } => self.transfer(from, to, *amount),
            BankOp::Balance { account } => BankReply::Balance(self.balance(account)),
        }
    }

    fn query(&self, op: &BankOp, _caller: &Caller) -> Option<BankReply> {
        match op {
            BankOp::Balance { account } => Some(BankReply::Balance(self.balance(account))),
            BankOp::Deposit { .. } | BankOp::Withdraw { .. } | BankOp::Transfer { .. } => None,
        }
    }

    fn snapshot(&self) -> Vec<u8> {
        // Encoding a map of strings to integers into a Vec cannot fail: rmp-serde's only
        // errors are from the writer (a Vec never fails) or from sequences of unknown
        // length (a BTreeMap knows its length).
        let image = (&self.balances, &self.owners);
        rmp_serde::to_vec(&image).expect("encoding two BTreeMaps into a Vec cannot fail")
    }

    fn restore(&mut self, snapshot: &[u8]) -> Result<(), ServiceError> {
        let (balances, owners): BankImage =
            rmp_serde::from_slice(snapshot).map_err(|e| ServiceError(format!("bank snapshot does not decode: {e}")))?;
        if let Some(account) = balances.iter().find_map(|(account, &balance)| (balance == 0).then_some(account)) {
            return Err(ServiceError(format!(
                "bank snapshot stores a zero balance for {account:?}; zero balances are never stored"
            )));
        }
        // Accept only the exact bytes `snapshot` would produce for this state (no
        // trailing bytes, no unsorted or duplicate accounts, no alternative integer
        // encodings). Then the state digest after a restore is the digest of the bytes
        // that were restored, which is what a replica fetching state checked.
        if rmp_serde::to_vec(&(&balances, &owners)).ok().as_deref() != Some(snapshot) {
            return Err(ServiceError("bank snapshot is not in canonical form".to_owned()));
        }
        self.balances = balances;
        self.owners = owners;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bulwark_crypto::Digest;
    use proptest::prelude::*;

    /// Runs `op` as the test's one client, who owns every account it opened.
    fn run(bank: &mut Bank, op: &BankOp) -> BankReply {
        run_as(1, bank, op)
    }

    fn run_as(client: u8, bank: &mut Bank, op: &BankOp) -> BankReply {
        bank.execute(op, &mut ExecutionContext::test(Caller::test(client), 1, 0))
    }

    fn digest(bank: &Bank) -> Digest {
        Digest::of(&bank.snapshot())
    }

    fn deposit(account: &str, amount: u64) -> BankOp {
        BankOp::Deposit { account: account.to_owned(), amount }
    }

    fn withdraw(account: &str, amount: u64) -> BankOp {
        BankOp::Withdraw { account: account.to_owned(), amount }
    }

    fn transfer(from: &str, to: &str, amount: u64) -> BankOp {
        BankOp::Transfer { from: from.to_owned(), to: to.to_owned(), amount }
    }

    fn balance(account: &str) -> BankOp {
        BankOp::Balance { account: account.to_owned() }
    }

    /// Alice has 100, Bob has 50.
    fn funded() -> Bank {
        let mut bank = Bank::new();
        run(&mut bank, &deposit("alice", 100));
        run(&mut bank, &deposit("bob", 50));
        bank
    }

    #[test]
    fn deposit_withdraw_balance() {
        let mut bank = Bank::new();
        assert_eq!(run(&mut bank, &balance("alice")), BankReply::Balance(0));
        assert_eq!(run(&mut bank, &deposit("alice", 70)), BankReply::Balance(70));
        assert_eq!(run(&mut bank, &deposit("alice", 30)), BankReply::Balance(100));
        assert_eq!(run(&mut bank, &withdraw("alice", 40)), BankReply::Balance(60));
        assert_eq!(run(&mut bank, &balance("alice")), BankReply::Balance(60));
        assert_eq!(run(&mut bank, &withdraw("alice", 60)), BankReply::Balance(0));
    }

    #[test]
    fn transfer_moves_money() {
        let mut bank = funded();
        assert_eq!(
            run(&mut bank, &transfer("alice", "bob", 30)),
            BankReply::Transferred { from_balance: 70, to_balance: 80 }
        );
        assert_eq!(
            run(&mut bank, &transfer("bob", "carol", 80)),
            BankReply::Transferred { from_balance: 0, to_balance: 80 }
        );
        assert_eq!(bank.balance("alice"), 70);
        assert_eq!(bank.balance("bob"), 0);
        assert_eq!(bank.balance("carol"), 80);
        assert_eq!(bank.total(), Some(150));
    }

    #[test]
    fn insufficient_funds_changes_nothing() {
        let mut bank = funded();
        let before = digest(&bank);
        let refused = BankReply::InsufficientFunds { balance: 100 };
        assert_eq!(run(&mut bank, &withdraw("alice", 101)), refused);
        assert_eq!(run(&mut bank, &transfer("alice", "bob", 101)), refused);
        assert_eq!(run(&mut bank, &transfer("alice", "carol", u64::MAX)), refused);
        assert_eq!(run(&mut bank, &transfer("alice", "alice", 101)), refused);
        assert_eq!(run(&mut bank, &withdraw("nobody", 1)), BankReply::NotOwner);
        assert_eq!(digest(&bank), before);
        assert_eq!(bank, funded());
    }

    #[test]
    fn overflow_changes_nothing() {
        let mut bank = funded();
        run(&mut bank, &deposit("whale", u64::MAX));
        let before = digest(&bank);
        let refused = BankReply::Overflow { balance: u64::MAX };
        assert_eq!(run(&mut bank, &deposit("whale", 1)), refused);
        assert_eq!(run(&mut bank, &transfer("alice", "whale", 1)), refused);
        assert_eq!(digest(&bank), before);
        assert_eq!(bank.balance("alice"), 100);
        // Depositing nothing never overflows.
        assert_eq!(run(&mut bank, &deposit("whale", 0)), BankReply::Balance(u64::MAX));
        assert_eq!(bank.total(), None, "the total no longer fits in a u64");
    }

    #[test]
    fn transfer_to_self_changes_nothing() {
        let mut bank = funded();
        let before = digest(&bank);
        assert_eq!(
            run(&mut bank, &transfer("alice", "alice", 100)),
            BankReply::Transferred { from_balance: 100, to_balance: 100 }
        );
        assert_eq!(digest(&bank), before);
    }

    #[test]
    fn zero_balances_are_not_stored() {
        let mut bank = Bank::new();
        run(&mut bank, &deposit("ghost", 0));
        run(&mut bank, &transfer("ghost", "other", 0));
        assert_eq!(digest(&bank), digest(&Bank::new()));

        // Emptying an account leaves the balances as if it was never used; its owner stays.
        let mut bank = funded();
        run(&mut bank, &withdraw("bob", 50));
        let mut alice_only = Bank::new();
        run(&mut alice_only, &deposit("alice", 100));
        assert_eq!(bank.balances, alice_only.balances);
        assert_eq!(bank.owner("bob"), Some(Caller::test(1).id));
    }

    #[test]
    fn only_the_owner_takes_money_out() {
        let mut bank = funded();
        let before = digest(&bank);
        assert_eq!(run_as(2, &mut bank, &withdraw("alice", 1)), BankReply::NotOwner);
        assert_eq!(run_as(2, &mut bank, &transfer("alice", "mallory", 1)), BankReply::NotOwner);
        assert_eq!(digest(&bank), before, "a refused debit changed the state");
        // Anyone may pay in; paying in does not take the account over.
        assert_eq!(run_as(2, &mut bank, &deposit("alice", 1)), BankReply::Balance(101));
        assert_eq!(bank.owner("alice"), Some(Caller::test(1).id));
        assert_eq!(run_as(2, &mut bank, &deposit("mallory", 5)), BankReply::Balance(5));
        assert_eq!(bank.owner("mallory"), Some(Caller::test(2).id));
        assert_eq!(run(&mut bank, &withdraw("mallory", 5)), BankReply::NotOwner);
        assert_eq!(run_as(2, &mut bank, &withdraw("mallory", 5)), BankReply::Balance(0));
    }

    #[test]
    fn query_answers_balance_only() {
        let bank = funded();
        assert_eq!(bank.query(&balance("alice"), &Caller::test(1)), Some(BankReply::Balance(100)));
        assert_eq!(bank.query(&balance("nobody"), &Caller::test(1)), Some(BankReply::Balance(0)));
        assert_eq!(bank.query(&deposit("alice", 1), &Caller::test(1)), None);
        assert_eq!(bank.query(&withdraw("alice", 1), &Caller::test(1)), None);
        assert_eq!(bank.query(&transfer("alice", "bob", 1), &Caller::test(1)), None);
        assert_eq!(bank, funded(), "query changed nothing");
    }

    #[test]
    fn snapshot_round_trips() {
        let bank = funded();
        let mut restored = Bank::new();
        restored.restore(&bank.snapshot()).unwrap();
        assert_eq!(digest(&restored), digest(&bank));
        assert_eq!(restored, bank);
    }

    #[test]
    fn restore_replaces_rather_than_merges() {
        let mut bank = Bank::new();
        run(&mut bank, &deposit("stale", 1));
        bank.restore(&funded().snapshot()).unwrap();
        assert_eq!(bank, funded());
    }

    #[test]
    fn restore_rejects_garbage_and_keeps_state() {
        let mut bank = funded();
        let before = digest(&bank);
        for garbage in [
            &b""[..],
            &b"\xc1"[..],
            &b"not a snapshot"[..],
            &[0x81, 0xa1, b'a'][..],       // a map whose only balance is cut off
            &[0x81, 0xa1, b'a', 0xff][..], // a negative balance
            &[0x93, 1, 2, 3][..],          // an array, not a map
        ] {
            let err = bank.restore(garbage).unwrap_err();
            assert!(err.0.contains("snapshot"), "unhelpful error: {err}");
        }
        assert_eq!(digest(&bank), before);
    }

    #[test]
    fn restore_rejects_non_canonical_encodings() {
        let mut bank = Bank::new();
        let mut trailing = funded().snapshot();
        trailing.push(0);
        assert!(bank.restore(&trailing).is_err());

        // Balances {"b": 1, "a": 1}, no owners: valid msgpack, accounts out of order.
        let unsorted = [0x92, 0x82, 0xa1, b'b', 1, 0xa1, b'a', 1, 0x80];
        assert!(bank.restore(&unsorted).unwrap_err().0.contains("canonical"));
        // Balances {"a": 1} with the 1 as a uint8 instead of a fixint.
        let wide_int = [0x92, 0x81, 0xa1, b'a', 0xcc, 1, 0x80];
        assert!(bank.restore(&wide_int).unwrap_err().0.contains("canonical"));
        // Balances {"a": 0}: zero balances are never stored.
        let zero = [0x92, 0x81, 0xa1, b'a', 0, 0x80];
        assert!(bank.restore(&zero).unwrap_err().0.contains("zero balance"));
        assert_eq!(bank, Bank::new());
    }

    #[test]
    fn same_ops_same_digest() {
        let ops = [
            deposit("alice", 100),
            transfer("alice", "bob", 60),
            withdraw("bob", 10),
            withdraw("alice", 1000),
            deposit("carol", 5),
        ];
        let (mut one, mut two) = (Bank::new(), Bank::new());
        for op in &ops {
            assert_eq!(run(&mut one, op), run(&mut two, op));
        }
        assert_eq!(digest(&one), digest(&two));
        assert_ne!(digest(&one), digest(&Bank::new()));
    }

    #[test]
    fn order_matters() {
        // The reason to replicate with total order: the same operations in a different
        // order can leave a different state.
        let (mut one, mut two) = (Bank::new(), Bank::new());
        for op in [deposit("alice", 10), withdraw("alice", 10)] {
            run(&mut one, &op);
        }
        for op in [withdraw("alice", 10), deposit("alice", 10)] {
            run(&mut two, &op);
        }
        assert_ne!(digest(&one), digest(&two));
    }

    fn arb_op() -> impl Strategy<Value = BankOp> {
        // A handful of accounts, so operations collide often, and amounts mostly small
        // but sometimes huge, to reach both refusals.
        let account = "[a-d]";
        let amount = prop_oneof![4 => 0u64..100, 1 => any::<u64>()];
        prop_oneof![
            (account, amount.clone()).prop_map(|(account, amount)| BankOp::Deposit { account, amount }),
            (account, amount.clone()).prop_map(|(account, amount)| BankOp::Withdraw { account, amount }),
            (account, account, amount).prop_map(|(from, to, amount)| BankOp::Transfer { from, to, amount }),
            account.prop_map(|account| BankOp::Balance { account }),
        ]
    }

    proptest! {
        #[test]
        fn any_history_keeps_the_invariants(
            ops in proptest::collection::vec(arb_op(), 0..60),
        ) {
            let mut bank = Bank::new();
            for op in &ops {
                let before = bank.clone();
                let queried = bank.query(op, &Caller::test(1));
                prop_assert_eq!(queried.is_some(), op.is_read_only());
                let reply = run(&mut bank, op);
                match reply {
                    BankReply::InsufficientFunds { .. } | BankReply::Overflow { .. } | BankReply::NotOwner => {
                        prop_assert_eq!(&bank, &before, "a refusal changed the state");
                    }
                    BankReply::Transferred { .. } => {
                        prop_assert_eq!(bank.total(), before.total(), "a transfer changed the total");
                    }
                    BankReply::Balance(_) => {}
                }
                if let Some(queried) = queried {
                    prop_assert_eq!(queried, reply);
                    prop_assert_eq!(&bank, &before);
                }
            }
            let snapshot = bank.snapshot();
            let mut restored = Bank::new();
            restored.restore(&snapshot).unwrap();
            prop_assert_eq!(digest(&restored), digest(&bank));
            prop_assert_eq!(restored.snapshot(), snapshot);
        }
    }
}
