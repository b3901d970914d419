//! Who this rank is: read from the variables `shmesh run`, Open MPI's and MPICH's `mpirun`
//! and Slurm's `srun` set.

use super::WorldError;

pub use crate::run::MAX_JOB_LEN;

/// This process's place in a job, as read from the environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The job id every rank of the job shares: names its rings.
    pub job: String,
    /// This rank.
    pub rank: usize,
    /// How many ranks.
    pub size: usize,
    /// Which launcher's variables were read (`shmesh`, `openmpi`, `pmi`, `slurm`, `singleton`).
    pub launcher: &'static str,
    /// Which host each rank runs on, when the job spans hosts (`shmesh run --hosts`); `None`:
    /// every rank on this host.
    pub placement: Option<Placement>,
}

/// How the ranks of a job spread over hosts: from `SHMESH_HOSTS` (`name:slots,...`, ranks
/// assigned in order, `slots` to a host) and `SHMESH_HOST` (this rank's host).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    /// Host names and how many ranks each runs, in rank order.
    pub hosts: Vec<(String, usize)>,
    /// The host this rank runs on.
    pub host: String,
}

impl Placement {
    /// The host of `rank`, if the hosts' slots reach it.
    pub fn host_of(&self, rank: usize) -> Option<&str> {
        let mut first = 0;
        for (name, slots) in &self.hosts {
            if rank < first + slots {
                return Some(name);
            }
            first += slots;
        }
        None
    }

    /// Reads `SHMESH_HOSTS` and `SHMESH_HOST`; both or neither must be set.
    fn read(
        get: &impl Fn(&str) -> Option<String>,
        size: usize,
    ) -> Result<Option<Placement>, WorldError> {
        let (hosts, host) = match (get("SHMESH_HOSTS"), get("SHMESH_HOST")) {
            (None, None) => return Ok(None),
            (Some(hosts), Some(host)) => (hosts, host),
            _ => {
                return Err(WorldError::Environment(
                    "SHMESH_HOSTS and SHMESH_HOST must be set together".into(),
                ))
            }
        };
        let mut list = Vec::new();
        for item in hosts.split(',').filter(|i| !i.is_empty()) {
            let parsed = item
                .rsplit_once(':')
                .and_then(|(name, slots)| Some((name.to_owned(), slots.parse::<usize>().ok()?)));
            match parsed {
                Some((name, slots)) if !name.is_empty() => list.push((name, slots)),
                _ => {
                    return Err(WorldError::Environment(format!(
                        "SHMESH_HOSTS item {item:?} is not NAME:SLOTS"
                    )))
                }
            }
        }
        let placement = Placement { hosts: list, host };
        if placement.host_of(size - 1).is_none() {
            return Err(WorldError::Environment(format!(
                "SHMESH_HOSTS={hosts:?} has fewer slots than the {size} ranks"
            )));
        }
        if !placement
            .hosts
            .iter()
            .any(|(name, _)| *name == placement.host)
        {
            return Err(WorldError::Environment(format!(
                "SHMESH_HOST={:?} is not in SHMESH_HOSTS={hosts:?}",
                placement.host
            )));
        }
        Ok(Some(placement))
    }
}

/// Reads the identity from `get` (the process environment in [`from_env`]).
///
/// In order: `SHMESH_RANK`/`SHMESH_SIZE`/`SHMESH_JOB` (`shmesh run`);
/// `OMPI_COMM_WORLD_RANK`/`_SIZE` (Open MPI; job from `PMIX_NAMESPACE`, then
/// `OMPI_MCA_ess_base_jobid`, then the parent process); `PMI_RANK`/`PMI_SIZE` (MPICH's
/// Hydra and other PMI launchers; job from `PMI_KVS_NAME`/`PMIX_NAMESPACE`, then the parent
/// process); `SLURM_PROCID`/`SLURM_NTASKS` (job `SLURM_JOB_ID.SLURM_STEP_ID`). `SHMESH_JOB`,
/// when set, names the job under any launcher. With none of them: a world of one.
///
/// # Errors
///
/// [`WorldError::Environment`] naming the variable that is malformed or missing.
pub fn identity(
    get: impl Fn(&str) -> Option<String>,
    parent: impl Fn() -> String,
) -> Result<Identity, WorldError> {
    let forced_job = get("SHMESH_JOB");
    let (launcher, rank_var, size_var) = if get("SHMESH_RANK").is_some() {
        ("shmesh", "SHMESH_RANK", "SHMESH_SIZE")
    } else if get("OMPI_COMM_WORLD_RANK").is_some() {
        ("openmpi", "OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE")
    } else if get("PMI_RANK").is_some() {
        ("pmi", "PMI_RANK", "PMI_SIZE")
    } else if get("SLURM_PROCID").is_some() {
        ("slurm", "SLURM_PROCID", "SLURM_NTASKS")
    } else {
        let job = match forced_job {
            Some(job) => check_job(&job, "SHMESH_JOB")?,
            None => format!("single-{}", std::process::id()),
        };
        return Ok(Identity {
            job,
            rank: 0,
            size: 1,
            launcher: "singleton",
            placement: None,
        });
    };
    let number = |var: &str| -> Result<usize, WorldError> {
        let text = get(var).ok_or_else(|| {
            WorldError::Environment(format!("{rank_var} is set but {var} is not"))
        })?;
        text.trim().parse().map_err(|_| {
            WorldError::Environment(format!("{var}={text:?} is not a non-negative integer"))
        })
    };
    let rank = number(rank_var)?;
    let size = number(size_var)?;
    if size == 0 || rank >= size {
        return Err(WorldError::Environment(format!(
            "{rank_var}={rank} is not below {size_var}={size}"
        )));
    }
    let job = match (forced_job, launcher) {
        (Some(job), _) => check_job(&job, "SHMESH_JOB")?,
        (None, "shmesh") => {
            return Err(WorldError::Environment(
                "SHMESH_RANK is set but SHMESH_JOB is not".into(),
            ))
        }
        (None, "openmpi") => get("PMIX_NAMESPACE")
            .or_else(|| get("OMPI_MCA_ess_base_jobid"))
            .map(|ns| derive_job("ompi", &ns))
            .unwrap_or_else(|| derive_job("ompi", &parent())),
        (None, "pmi") => get("PMI_KVS_NAME")
            .or_else(|| get("PMIX_NAMESPACE"))
            .map(|ns| derive_job("pmi", &ns))
            .unwrap_or_else(|| derive_job("pmi", &parent())),
        (None, _) => {
            let id = get("SLURM_JOB_ID").ok_or_else(|| {
                WorldError::Environment("SLURM_PROCID is set but SLURM_JOB_ID is not".into())
            })?;
            let step = get("SLURM_STEP_ID").unwrap_or_else(|| "0".into());
            derive_job("slurm", &format!("{id}.{step}"))
        }
    };
    let placement = Placement::read(&get, size)?;
    if let Some(p) = &placement {
        if p.host_of(rank) != Some(p.host.as_str()) {
            return Err(WorldError::Environment(format!(
                "rank {rank} runs on {:?} but SHMESH_HOSTS places it on {:?}",
                p.host,
                p.host_of(rank)
            )));
        }
    }
    Ok(Identity {
        job,
        rank,
        size,
        launcher,
        placement,
    })
}

/// [`identity`] from this process's environment; the parent process (pid and start time) is
/// the job id of last resort, shared by the ranks one launcher daemon started.
///
/// # Errors
///
/// As [`identity`].
pub fn from_env() -> Result<Identity, WorldError> {
    identity(|var| std::env::var(var).ok(), parent_id)
}

fn parent_id() -> String {
    let ppid = std::os::unix::process::parent_id();
    // Field 22 of /proc/PID/stat is the start time: pid and start time name one process.
    let start = std::fs::read_to_string(format!("/proc/{ppid}/stat"))
        .ok()
        .and_then(|stat| {
            let after = stat.rsplit_once(')')?.1.to_owned();
            after.split_whitespace().nth(19).map(str::to_owned)
        })
        .unwrap_or_default();
    format!("{ppid}-{start}")
}

/// Checks an explicit job id (the launcher's rule, [`crate::run::check_job_id`]).
///
/// # Errors
///
/// [`WorldError::Environment`] naming the variable and what is wrong with it.
pub fn check_job(job: &str, var: &str) -> Result<String, WorldError> {
    crate::run::check_job_id(job).map_err(|e| WorldError::Environment(format!("{var}: {e}")))?;
    Ok(job.to_owned())
}

/// A job id from a launcher's own id: its characters outside `[A-Za-z0-9_-]` become `-`, and
/// a long one keeps its start and a hash of the whole.
fn derive_job(prefix: &str, raw: &str) -> String {
    let clean: String = raw
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c
            } else {
                '-'
            }
        })
        .collect();
    let full = format!("{prefix}-{clean}");
    if full.len() <= MAX_JOB_LEN {
        return full;
    }
    // FNV-1a: stable across processes and builds (std's hasher is not).
    let hash = raw.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    });
    format!("{}-{hash:016x}", &full[..MAX_JOB_LEN - 17])
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn id(vars: &[(&str, &str)]) -> Result<Identity, WorldError> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        identity(|k| map.get(k).cloned(), || "77-12345".into())
    }

    #[test]
    fn shmesh_variables_come_first() {
        let me = id(&[
            ("SHMESH_JOB", "j1"),
            ("SHMESH_RANK", "2"),
            ("SHMESH_SIZE", "4"),
            ("OMPI_COMM_WORLD_RANK", "0"),
            ("OMPI_COMM_WORLD_SIZE", "9"),
        ])
        .unwrap();
        assert_eq!(
            (me.job.as_str(), me.rank, me.size, me.launcher),
            ("j1", 2, 4, "shmesh")
        );
    }

    #[test]
    fn open_mpi_pmi_and_slurm_are_read() {
        let ompi = id(&[
            ("OMPI_COMM_WORLD_RANK", "1"),
            ("OMPI_COMM_WORLD_SIZE", "3"),
            ("PMIX_NAMESPACE", "prterun-host-4242@1"),
        ])
        .unwrap();
        assert_eq!((ompi.rank, ompi.size, ompi.launcher), (1, 3, "openmpi"));
        assert_eq!(ompi.job, "ompi-prterun-host-4242-1");
        let pmi = id(&[("PMI_RANK", "0"), ("PMI_SIZE", "2")]).unwrap();
        assert_eq!(pmi.job, "pmi-77-12345", "the parent process names the job");
        let slurm = id(&[
            ("SLURM_PROCID", "5"),
            ("SLURM_NTASKS", "8"),
            ("SLURM_JOB_ID", "991"),
            ("SLURM_STEP_ID", "2"),
        ])
        .unwrap();
        assert_eq!((slurm.job.as_str(), slurm.rank), ("slurm-991-2", 5));
        let forced = id(&[("PMI_RANK", "0"), ("PMI_SIZE", "2"), ("SHMESH_JOB", "mine")]).unwrap();
        assert_eq!(forced.job, "mine");
    }

    #[test]
    fn hosts_place_ranks_in_order() {
        let me = id(&[
            ("SHMESH_JOB", "j"),
            ("SHMESH_RANK", "3"),
            ("SHMESH_SIZE", "5"),
            ("SHMESH_HOSTS", "a:2,b:3"),
            ("SHMESH_HOST", "b"),
        ])
        .unwrap();
        let p = me.placement.unwrap();
        let hosts: Vec<_> = (0..5).map(|r| p.host_of(r).unwrap()).collect();
        assert_eq!(hosts, ["a", "a", "b", "b", "b"]);
        for bad in [
            vec![("SHMESH_HOSTS", "a:2,b:3")],
            vec![("SHMESH_HOSTS", "a:2,b:1"), ("SHMESH_HOST", "b")],
            vec![("SHMESH_HOSTS", "a:2,b:3"), ("SHMESH_HOST", "a")],
            vec![("SHMESH_HOSTS", "a2,b:3"), ("SHMESH_HOST", "b")],
        ] {
            let mut vars = vec![
                ("SHMESH_JOB", "j"),
                ("SHMESH_RANK", "3"),
                ("SHMESH_SIZE", "5"),
            ];
            vars.extend(bad);
            assert!(id(&vars).is_err(), "{vars:?}");
        }
    }

    #[test]
    fn no_launcher_is_a_world_of_one() {
        let me = id(&[]).unwrap();
        assert_eq!((me.rank, me.size, me.launcher), (0, 1, "singleton"));
    }

    #[test]
    fn bad_values_name_the_variable() {
        let cases: &[&[(&str, &str)]] = &[
            &[("SHMESH_RANK", "1"), ("SHMESH_SIZE", "2")],
            &[
                ("SHMESH_JOB", "j"),
                ("SHMESH_RANK", "x"),
                ("SHMESH_SIZE", "2"),
            ],
            &[
                ("SHMESH_JOB", "j"),
                ("SHMESH_RANK", "2"),
                ("SHMESH_SIZE", "2"),
            ],
            &[
                ("SHMESH_JOB", "j/../x"),
                ("SHMESH_RANK", "0"),
                ("SHMESH_SIZE", "1"),
            ],
            &[("OMPI_COMM_WORLD_RANK", "0")],
            &[("SLURM_PROCID", "0"), ("SLURM_NTASKS", "1")],
        ];
        for vars in cases {
            let err = id(vars).unwrap_err().to_string();
            assert!(
                err.contains("SHMESH_") || err.contains("OMPI_") || err.contains("SLURM_"),
                "{err}"
            );
        }
    }

    #[test]
    fn long_launcher_ids_are_shortened_stably() {
        let long = "x".repeat(200);
        let a = derive_job("ompi", &long);
        assert_eq!(a.len(), MAX_JOB_LEN);
        assert_eq!(a, derive_job("ompi", &long));
        assert_ne!(a, derive_job("ompi", &format!("{long}y")));
        check_job(&a, "t").unwrap();
    }
}
