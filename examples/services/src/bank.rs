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

use std::collections::BTreeMap;

use bulwark_framework::service::{Service, ServiceError};
use serde::{Deserialize, Serialize};

/// An operation on the bank. Accounts are named by arbitrary strings and need not be
/// opened: an account nobody has deposited into has balance zero.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum BankOp {
    /// Adds `amount` to `account`. Answers [`BankReply::Balance`] with the new balance,
    /// or [`BankReply::Overflow`].
    Deposit { account: String, amount: u64 },
    /// Takes `amount` from `account`. Answers [`BankReply::Balance`] with the new
    /// balance, or [`BankReply::InsufficientFunds`].
    Withdraw { account: String, amount: u64 },
    /// Moves `amount` from `from` to `to`. Answers [`BankReply::Transferred`], or
    /// [`BankReply::InsufficientFunds`] (checked first) or [`BankReply::Overflow`].
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
}

/// Lamport's toy bank, replicated by Bulwark.
///
/// Only accounts with a non-zero balance are stored. An account at zero and an account
/// never used behave identically, so storing one but not the other would let two
/// replicas that agree on every balance disagree on the state digest.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Bank {
    balances: BTreeMap<String, u64>,
}

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

    fn deposit(&mut self, account: &str, amount: u64) -> BankReply {
        let balance = self.balance(account);
        match balance.checked_add(amount) {
            Some(new) => {
                self.set(account, new);
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

    fn execute(&mut self, op: &BankOp) -> BankReply {
        match op {
            BankOp::Deposit { account, amount } => self.deposit(account, *amount),
            BankOp::Withdraw { account, amount } => self.withdraw(account, *amount),
            BankOp::Transfer { from, to, amount } => self.transfer(from, to, *amount),
            BankOp::Balance { account } => BankReply::Balance(self.balance(account)),
        }
    }

    fn query(&self, op: &BankOp) -> Option<BankReply> {
        match op {
            BankOp::Balance { account } => Some(BankReply::Balance(self.balance(account))),
            BankOp::Deposit { .. } | BankOp::Withdraw { .. } | BankOp::Transfer { .. } => None,
        }
    }

    fn snapshot(&self) -> Vec<u8> {
        // Encoding a map of strings to integers into a Vec cannot fail: rmp-serde's only
        // errors are from the writer (a Vec never fails) or from sequences of unknown
        // length (a BTreeMap knows its length).
        rmp_serde::to_vec(&self.balances).expect("encoding a BTreeMap into a Vec cannot fail")
    }

    fn restore(&mut self, snapshot: &[u8]) -> Result<(), ServiceError> {
        let balances: BTreeMap<String, u64> =
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
        if rmp_serde::to_vec(&balances).ok().as_deref() != Some(snapshot) {
            return Err(ServiceError("bank snapshot is not in canonical form".to_owned()));
        }
        self.balances = balances;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

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
        bank.execute(&deposit("alice", 100));
        bank.execute(&deposit("bob", 50));
        bank
    }

    #[test]
    fn deposit_withdraw_balance() {
        let mut bank = Bank::new();
        assert_eq!(bank.execute(&balance("alice")), BankReply::Balance(0));
        assert_eq!(bank.execute(&deposit("alice", 70)), BankReply::Balance(70));
        assert_eq!(bank.execute(&deposit("alice", 30)), BankReply::Balance(100));
        assert_eq!(bank.execute(&withdraw("alice", 40)), BankReply::Balance(60));
        assert_eq!(bank.execute(&balance("alice")), BankReply::Balance(60));
        assert_eq!(bank.execute(&withdraw("alice", 60)), BankReply::Balance(0));
    }

    #[test]
    fn transfer_moves_money() {
        let mut bank = funded();
        assert_eq!(
            bank.execute(&transfer("alice", "bob", 30)),
            BankReply::Transferred { from_balance: 70, to_balance: 80 }
        );
        assert_eq!(
            bank.execute(&transfer("bob", "carol", 80)),
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
        let before = bank.state_digest();
        let refused = BankReply::InsufficientFunds { balance: 100 };
        assert_eq!(bank.execute(&withdraw("alice", 101)), refused);
        assert_eq!(bank.execute(&transfer("alice", "bob", 101)), refused);
        assert_eq!(bank.execute(&transfer("alice", "carol", u64::MAX)), refused);
        assert_eq!(bank.execute(&transfer("alice", "alice", 101)), refused);
        assert_eq!(bank.execute(&withdraw("nobody", 1)), BankReply::InsufficientFunds { balance: 0 });
        assert_eq!(bank.state_digest(), before);
        assert_eq!(bank, funded());
    }

    #[test]
    fn overflow_changes_nothing() {
        let mut bank = funded();
        bank.execute(&deposit("whale", u64::MAX));
        let before = bank.state_digest();
        let refused = BankReply::Overflow { balance: u64::MAX };
        assert_eq!(bank.execute(&deposit("whale", 1)), refused);
        assert_eq!(bank.execute(&transfer("alice", "whale", 1)), refused);
        assert_eq!(bank.state_digest(), before);
        assert_eq!(bank.balance("alice"), 100);
        // Depositing nothing never overflows.
        assert_eq!(bank.execute(&deposit("whale", 0)), BankReply::Balance(u64::MAX));
        assert_eq!(bank.total(), None, "the total no longer fits in a u64");
    }

    #[test]
    fn transfer_to_self_changes_nothing() {
        let mut bank = funded();
        let before = bank.state_digest();
        assert_eq!(
            bank.execute(&transfer("alice", "alice", 100)),
            BankReply::Transferred { from_balance: 100, to_balance: 100 }
        );
        assert_eq!(bank.state_digest(), before);
    }

    #[test]
    fn zero_balances_are_not_stored() {
        let mut bank = Bank::new();
        bank.execute(&deposit("ghost", 0));
        bank.execute(&transfer("ghost", "other", 0));
        assert_eq!(bank.state_digest(), Bank::new().state_digest());

        // Emptying an account returns the bank to the state where it was never used.
        let mut bank = funded();
        bank.execute(&withdraw("bob", 50));
        let mut alice_only = Bank::new();
        alice_only.execute(&deposit("alice", 100));
        assert_eq!(bank.state_digest(), alice_only.state_digest());
    }

    #[test]
    fn query_answers_balance_only() {
        let bank = funded();
        assert_eq!(bank.query(&balance("alice")), Some(BankReply::Balance(100)));
        assert_eq!(bank.query(&balance("nobody")), Some(BankReply::Balance(0)));
        assert_eq!(bank.query(&deposit("alice", 1)), None);
        assert_eq!(bank.query(&withdraw("alice", 1)), None);
        assert_eq!(bank.query(&transfer("alice", "bob", 1)), None);
        assert_eq!(bank, funded(), "query changed nothing");
    }

    #[test]
    fn snapshot_round_trips() {
        let bank = funded();
        let mut restored = Bank::new();
        restored.restore(&bank.snapshot()).unwrap();
        assert_eq!(restored.state_digest(), bank.state_digest());
        assert_eq!(restored, bank);
    }

    #[test]
    fn restore_replaces_rather_than_merges() {
        let mut bank = Bank::new();
        bank.execute(&deposit("stale", 1));
        bank.restore(&funded().snapshot()).unwrap();
        assert_eq!(bank, funded());
    }

    #[test]
    fn restore_rejects_garbage_and_keeps_state() {
        let mut bank = funded();
        let before = bank.state_digest();
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
        assert_eq!(bank.state_digest(), before);
    }

    #[test]
    fn restore_rejects_non_canonical_encodings() {
        let mut bank = Bank::new();
        let mut trailing = funded().snapshot();
        trailing.push(0);
        assert!(bank.restore(&trailing).is_err());

        // {"b": 1, "a": 1}: valid msgpack, accounts out of order.
        let unsorted = [0x82, 0xa1, b'b', 1, 0xa1, b'a', 1];
        assert!(bank.restore(&unsorted).is_err());
        // {"a": 1} with the 1 as a uint8 instead of a fixint.
        let wide_int = [0x81, 0xa1, b'a', 0xcc, 1];
        assert!(bank.restore(&wide_int).is_err());
        // {"a": 0}: zero balances are never stored.
        let zero = [0x81, 0xa1, b'a', 0];
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
            assert_eq!(one.execute(op), two.execute(op));
        }
        assert_eq!(one.state_digest(), two.state_digest());
        assert_ne!(one.state_digest(), Bank::new().state_digest());
    }

    #[test]
    fn order_matters() {
        // The reason to replicate with total order: the same operations in a different
        // order can leave a different state.
        let (mut one, mut two) = (Bank::new(), Bank::new());
        for op in [deposit("alice", 10), withdraw("alice", 10)] {
            one.execute(&op);
        }
        for op in [withdraw("alice", 10), deposit("alice", 10)] {
            two.execute(&op);
        }
        assert_ne!(one.state_digest(), two.state_digest());
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
                let queried = bank.query(op);
                prop_assert_eq!(queried.is_some(), op.is_read_only());
                let reply = bank.execute(op);
                match reply {
                    BankReply::InsufficientFunds { .. } | BankReply::Overflow { .. } => {
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
            prop_assert_eq!(restored.state_digest(), bank.state_digest());
            prop_assert_eq!(restored.snapshot(), snapshot);
        }
    }
}
