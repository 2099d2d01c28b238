//! Command-line pieces `fdm-shim` and `fdmctl` share, so that both read the same token file and the
//! same `ID=PATH` arguments the same way.

use anyhow::{Context, Result};
use std::path::Path;

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
