//! Where this process sits in a data-parallel job: the world size, its rank, its GPU on the
//! node, and how to find rank 0, read from the launcher's environment.
//!
//! - torchrun (and `torch.distributed.launch`): `WORLD_SIZE`, `RANK`, `LOCAL_RANK`,
//!   `MASTER_ADDR`, `MASTER_PORT`; any `WORLD_SIZE`, 1 included, takes the NCCL path.
//! - Slurm (`srun`, one task per GPU): `SLURM_NTASKS`, `SLURM_PROCID`, `SLURM_LOCALID`, and rank
//!   0's host is the first of `SLURM_JOB_NODELIST` (`MASTER_ADDR` / `MASTER_PORT` override it;
//!   the port defaults to 29500); a job of one task trains as a single-GPU run.
//!
//! `--rendezvous file:PATH` finds rank 0 through a file on a shared filesystem instead of
//! `MASTER_ADDR:MASTER_PORT`; `tcp:HOST:PORT` names the address outright.

use std::path::PathBuf;

use super::DistError;

/// The port rank 0 listens on when the launcher names none (torchrun's default).
pub const DEFAULT_PORT: u16 = 29500;

/// How the ranks find rank 0.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rendezvous {
    /// Rank 0 listens on `port` (on every interface); the others connect to `host:port`.
    Tcp { host: String, port: u16 },
    /// Rank 0 listens on a free port and writes its address into the file; the others read it.
    File(PathBuf),
}

/// One process of a data-parallel job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Launch {
    pub world_size: usize,
    pub rank: usize,
    /// The GPU of this process on its node (device ordinal).
    pub local_rank: usize,
    pub rendezvous: Rendezvous,
    /// Which launcher's variables these came from (for messages).
    pub launcher: &'static str,
}

fn parse<T: std::str::FromStr>(
    get: &dyn Fn(&str) -> Option<String>,
    name: &str,
) -> Result<Option<T>, DistError> {
    match get(name) {
        None => Ok(None),
        Some(v) => v.trim().parse().map(Some).map_err(|_| DistError::Launch {
            what: format!("{name}={v:?} is not a non-negative integer"),
        }),
    }
}

fn required<T: std::str::FromStr>(
    get: &dyn Fn(&str) -> Option<String>,
    name: &str,
    launcher: &str,
) -> Result<T, DistError> {
    parse(get, name)?.ok_or_else(|| DistError::Launch {
        what: format!("{launcher} launch: {name} is not set"),
    })
}

/// The first host of a Slurm node list: `gpu[03-05,9],cpu1` gives `gpu03`.
pub fn first_slurm_host(list: &str) -> Option<String> {
    let list = list.trim();
    let end = list
        .char_indices()
        .scan(0i32, |depth, (i, c)| {
            match c {
                '[' => *depth += 1,
                ']' => *depth -= 1,
                _ => {}
            }
            Some((i, c, *depth))
        })
        .find(|&(_, c, depth)| c == ',' && depth == 0)
        .map_or(list.len(), |(i, _, _)| i);
    let first = &list[..end];
    let host = match first.split_once('[') {
        Some((prefix, rest)) => {
            let ranges = rest.strip_suffix(']')?;
            let item = ranges.split(',').next()?;
            let start = item.split('-').next()?;
            format!("{prefix}{start}")
        }
        None => first.to_string(),
    };
    (!host.is_empty()).then_some(host)
}

/// The `--rendezvous` value: `file:PATH` or `tcp:HOST:PORT`.
pub fn parse_rendezvous(value: &str) -> Result<Rendezvous, DistError> {
    if let Some(path) = value.strip_prefix("file:").filter(|p| !p.is_empty()) {
        return Ok(Rendezvous::File(PathBuf::from(path)));
    }
    if let Some((host, port)) = value.strip_prefix("tcp:").and_then(|a| a.rsplit_once(':')) {
        if let Ok(port) = port.parse() {
            if !host.is_empty() {
                return Ok(Rendezvous::Tcp {
                    host: host.to_string(),
                    port,
                });
            }
        }
    }
    Err(DistError::Launch {
        what: format!("--rendezvous {value:?}: expected file:PATH or tcp:HOST:PORT"),
    })
}

/// This process's place in a job from the launcher's variables (`get` reads one), or `None`
/// for a single-process run. `rendezvous` (the `--rendezvous` flag) replaces the launcher's
/// address.
pub fn from_env(
    get: &dyn Fn(&str) -> Option<String>,
    rendezvous: Option<&str>,
) -> Result<Option<Launch>, DistError> {
    let (launcher, world_size, rank, local_rank, default_host) = if get("WORLD_SIZE").is_some() {
        let launcher = "torchrun";
        (
            launcher,
            required::<usize>(get, "WORLD_SIZE", launcher)?,
            required::<usize>(get, "RANK", launcher)?,
            parse::<usize>(get, "LOCAL_RANK")?.unwrap_or(0),
            None,
        )
    } else if get("SLURM_PROCID").is_some() && get("SLURM_NTASKS").is_some() {
        let launcher = "Slurm";
        let world_size = required::<usize>(get, "SLURM_NTASKS", launcher)?;
        if world_size == 1 && rendezvous.is_none() {
            return Ok(None);
        }
        (
            launcher,
            world_size,
            required::<usize>(get, "SLURM_PROCID", launcher)?,
            parse::<usize>(get, "SLURM_LOCALID")?.unwrap_or(0),
            get("SLURM_JOB_NODELIST").and_then(|l| first_slurm_host(&l)),
        )
    } else if rendezvous.is_some() {
        return Err(DistError::Launch {
            what: "--rendezvous needs a launcher's variables (WORLD_SIZE and RANK, or Slurm's SLURM_NTASKS and SLURM_PROCID)".into(),
        });
    } else {
        return Ok(None);
    };
    if world_size == 0 || rank >= world_size {
        return Err(DistError::Launch {
            what: format!("{launcher} launch: rank {rank} is outside a world of {world_size}"),
        });
    }
    let rendezvous = match rendezvous {
        Some(value) => parse_rendezvous(value)?,
        None => {
            let host = get("MASTER_ADDR").or(default_host);
            let port = parse::<u16>(get, "MASTER_PORT")?.unwrap_or(DEFAULT_PORT);
            match host {
                Some(host) => Rendezvous::Tcp { host, port },
                None if world_size == 1 => Rendezvous::Tcp {
                    host: "127.0.0.1".into(),
                    port,
                },
                None => {
                    return Err(DistError::Launch {
                        what: format!(
                            "{launcher} launch: MASTER_ADDR is not set (rank 0's host), and no --rendezvous file:PATH"
                        ),
                    })
                }
            }
        }
    };
    Ok(Some(Launch {
        world_size,
        rank,
        local_rank,
        rendezvous,
        launcher,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: std::collections::HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| map.get(k).cloned()
    }

    #[test]
    fn torchrun_variables() {
        let get = env(&[
            ("WORLD_SIZE", "8"),
            ("RANK", "5"),
            ("LOCAL_RANK", "1"),
            ("MASTER_ADDR", "node0"),
            ("MASTER_PORT", "1234"),
        ]);
        let l = from_env(&get, None).unwrap().unwrap();
        assert_eq!((l.world_size, l.rank, l.local_rank), (8, 5, 1));
        assert_eq!(
            l.rendezvous,
            Rendezvous::Tcp {
                host: "node0".into(),
                port: 1234
            }
        );
    }

    #[test]
    fn slurm_variables_take_the_first_node() {
        let get = env(&[
            ("SLURM_NTASKS", "16"),
            ("SLURM_PROCID", "9"),
            ("SLURM_LOCALID", "1"),
            ("SLURM_JOB_NODELIST", "gpu[07-09,12],login1"),
        ]);
        let l = from_env(&get, None).unwrap().unwrap();
        assert_eq!((l.world_size, l.rank, l.local_rank), (16, 9, 1));
        assert_eq!(
            l.rendezvous,
            Rendezvous::Tcp {
                host: "gpu07".into(),
                port: DEFAULT_PORT
            }
        );
        assert_eq!(first_slurm_host("a1,b2").as_deref(), Some("a1"));
        assert_eq!(first_slurm_host("n[1-2]").as_deref(), Some("n1"));
    }

    #[test]
    fn no_launcher_is_a_single_process_and_bad_values_are_named() {
        assert_eq!(from_env(&env(&[]), None).unwrap(), None);
        let one_task = env(&[("SLURM_NTASKS", "1"), ("SLURM_PROCID", "0")]);
        assert_eq!(from_env(&one_task, None).unwrap(), None);
        let bad = env(&[("WORLD_SIZE", "2"), ("RANK", "2"), ("MASTER_ADDR", "h")]);
        let e = from_env(&bad, None).unwrap_err().to_string();
        assert!(e.contains("rank 2 is outside a world of 2"), "{e}");
        let bad = env(&[("WORLD_SIZE", "two"), ("RANK", "0")]);
        let e = from_env(&bad, None).unwrap_err().to_string();
        assert!(e.contains("WORLD_SIZE=\"two\""), "{e}");
        let no_addr = env(&[("WORLD_SIZE", "2"), ("RANK", "0")]);
        let e = from_env(&no_addr, None).unwrap_err().to_string();
        assert!(e.contains("MASTER_ADDR"), "{e}");
        let file = from_env(&no_addr, Some("file:/shared/rdv"))
            .unwrap()
            .unwrap();
        assert_eq!(file.rendezvous, Rendezvous::File("/shared/rdv".into()));
        assert!(parse_rendezvous("udp:x").is_err());
        assert!(from_env(&env(&[]), Some("file:/x")).is_err());
    }
}
