//! Command-line pieces `fdm-shim` and `fdmctl` share, so that both read the same token file and the
//! same `ID=PATH` arguments the same way, and the words `fdmctl`'s flags take.

use crate::model::MaintenanceAction;
use anyhow::{Context, Result};
use clap::builder::PossibleValue;
use heartbeat_fs::records::{
    IsolationResponse, RestartPolicy, RestartPriority, StorageLossResponse,
};
use serde::Serialize;
use std::path::Path;

/// A flag's word: a value of the API's enum `T`, spelt as the API spells it (`High`,
/// `HostFailureOnly`, `enter`), as a clap value enum, so that `--help` lists the words and what
/// each does, and a wrong one is refused naming them before anything is sent. Serialised as the
/// value itself, so a flag goes into a request body as it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct Word<T>(pub T);

/// The words of an API enum: each variant with its API word and what it means. The match is
/// exhaustive, so a new variant is a compile error here until it has its word; a test checks that
/// each word is the one serde writes.
macro_rules! words {
    ($t:ident { $($v:ident => $word:literal: $help:literal,)+ }) => {
        impl clap::ValueEnum for Word<$t> {
            fn value_variants<'a>() -> &'a [Self] {
                &[$(Word($t::$v)),+]
            }

            fn to_possible_value(&self) -> Option<PossibleValue> {
                Some(match self.0 {
                    $($t::$v => PossibleValue::new($word).help($help),)+
                })
            }
        }
    };
}

words!(RestartPriority {
    Disabled => "Disabled": "never restarted by HA",
    Lowest => "Lowest": "restarted last",
    Low => "Low": "restarted after Medium",
    Medium => "Medium": "the default",
    High => "High": "restarted before Medium",
    Highest => "Highest": "restarted first",
});

words!(IsolationResponse {
    PowerOff => "PowerOff": "power it off at once, so that the master restarts it elsewhere",
    Shutdown => "Shutdown": "shut the guest down cleanly, power off after the shutdown timeout",
    LeaveRunning => "LeaveRunning": "keep it running (its datastore lease still guards against a second copy)",
});

words!(RestartPolicy {
    Always => "Always": "restart after a host failure and after the VM crashed",
    HostFailureOnly => "HostFailureOnly": "restart only when its host failed or was isolated",
    Never => "Never": "never restart: monitored only",
});

words!(StorageLossResponse {
    Keep => "Keep": "keep it running for as long as the outage hold lasts",
    Pause => "Pause": "suspend it after storage_loss_timeout_ms; resumed when the storage is back",
    PowerOff => "PowerOff": "power it off after storage_loss_timeout_ms; restarted when the storage is back",
});

words!(MaintenanceAction {
    Enter => "enter": "take the host out of HA: no VMs restarted on it, no capacity counted",
    Exit => "exit": "return the host to HA",
});

/// The bearer token in `path`. Surrounding whitespace is dropped because token files are usually
/// written by `echo` or an editor, with a trailing newline the server never sees in a header.
pub fn read_token(path: &Path) -> Result<String> {
    Ok(std::fs::read_to_string(path)
        .with_context(|| format!("reading token file {}", path.display()))?
        .trim()
        .to_string())
}

/// Splits an `ID=PATH` argument (`--datastore-root`, `--mount`). `id_name` is how the usage names the
/// id and `noun` what it identifies, both only for the error messages.
pub fn id_and_path<'a>(s: &'a str, id_name: &str, noun: &str) -> Result<(u32, &'a str), String> {
    let (id, path) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?}: expected {id_name}=PATH"))?;
    let id = id
        .parse()
        .map_err(|_| format!("{s:?}: {id:?} is not a {noun} id"))?;
    Ok((id, path))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::ValueEnum;

    /// Every word of `T` is the API's (serde's) word for its value, and reads back to it.
    fn words_are_the_apis<T>()
    where
        Word<T>: ValueEnum,
        T: Serialize + serde::de::DeserializeOwned + PartialEq + std::fmt::Debug + Copy,
    {
        let all = Word::<T>::value_variants();
        assert!(!all.is_empty());
        for w in all {
            let pv = w.to_possible_value().expect("a word");
            assert_eq!(serde_json::to_value(w.0).unwrap(), pv.get_name(), "{w:?}");
            assert_eq!(serde_json::to_value(w).unwrap(), pv.get_name(), "{w:?}");
            let back: T = serde_json::from_value(pv.get_name().into()).unwrap();
            assert_eq!(back, w.0);
            assert!(pv.get_help().is_some(), "{w:?} has no help");
        }
    }

    #[test]
    fn flag_words_are_the_api_words() {
        words_are_the_apis::<RestartPriority>();
        words_are_the_apis::<IsolationResponse>();
        words_are_the_apis::<RestartPolicy>();
        words_are_the_apis::<StorageLossResponse>();
        words_are_the_apis::<MaintenanceAction>();
        assert_eq!(
            Word::<MaintenanceAction>::from_str("enter", false),
            Ok(Word(MaintenanceAction::Enter))
        );
    }

    #[test]
    fn id_and_path_names_what_is_wrong() {
        assert_eq!(
            id_and_path("2=/mnt/a=b", "ID", "datastore"),
            Ok((2, "/mnt/a=b"))
        );
        assert_eq!(
            id_and_path("/mnt/a", "HOST_ID", "host"),
            Err(r#""/mnt/a": expected HOST_ID=PATH"#.to_string())
        );
        assert_eq!(
            id_and_path("x=/mnt/a", "ID", "datastore"),
            Err(r#""x=/mnt/a": "x" is not a datastore id"#.to_string())
        );
    }
}
