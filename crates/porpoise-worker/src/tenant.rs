//! Which OS user a task runs as: its spec's `tenant` (DolphinScheduler's tenant), or the
//! worker's own user. A worker runs a tenant's task only if the user exists, is on its
//! allow-list (`--tenants`; any user by default), and the worker can become it (it runs as
//! root, or as that same user). Tasks never run as root unless the worker is started with
//! `--allow-root-tasks`.

use std::path::PathBuf;

use nix::unistd::{Uid, User};

/// Which tenants a worker runs tasks as.
#[derive(Debug, Clone, Default)]
pub struct TenantPolicy {
    /// The users tasks may run as; any existing user when `None`.
    pub allowed: Option<Vec<String>>,
    /// Whether a task may run as root (a `root` tenant, or no tenant on a worker run as root).
    pub allow_root: bool,
}

/// The user an attempt's process becomes before it runs the command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunAs {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    pub home: PathBuf,
}

/// The user a task with `tenant` (empty: none) runs as under `policy`: `None` for the worker's
/// own user, or why the worker will not run it.
pub fn resolve(tenant: &str, policy: &TenantPolicy) -> Result<Option<RunAs>, String> {
    let me = Uid::effective();
    if tenant.is_empty() {
        if me.is_root() && !policy.allow_root {
            return Err("the task has no tenant and this worker runs as root: give the task `tenant: USER`, or \
                        start the worker with --allow-root-tasks"
                .into());
        }
        return Ok(None);
    }
    porpoise_core::spec::check_tenant(tenant)?;
    if let Some(allowed) = &policy.allowed
        && !allowed.iter().any(|a| a == tenant)
    {
        return Err(format!("tenant {tenant} is not one this worker runs tasks as (--tenants {})", allowed.join(",")));
    }
    let user = User::from_name(tenant)
        .map_err(|e| format!("cannot look tenant {tenant} up: {e}"))?
        .ok_or_else(|| format!("tenant {tenant} is no user on this worker"))?;
    if user.uid.is_root() && !policy.allow_root {
        return Err(format!("tenant {tenant} is root: this worker runs no task as root (--allow-root-tasks)"));
    }
    if user.uid == me {
        return Ok(None);
    }
    if !me.is_root() {
        return Err(format!(
            "this worker runs as uid {me} and cannot run tasks as tenant {tenant}: start it as root to use tenants"
        ));
    }
    Ok(Some(RunAs { name: user.name, uid: user.uid.as_raw(), gid: user.gid.as_raw(), home: user.dir }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tenants_must_exist_be_allowed_and_not_root() {
        let open = TenantPolicy::default();
        let e = resolve("no-such-user-here", &open).expect_err("unknown");
        assert!(e.contains("is no user on this worker"), "{e}");
        let e = resolve("Bad Name", &open).expect_err("not a user name");
        assert!(e.contains("is not a user name"), "{e}");
        let e = resolve("root", &open).expect_err("root");
        assert!(e.contains("runs no task as root"), "{e}");
        let listed = TenantPolicy { allowed: Some(vec!["etl".into()]), allow_root: false };
        let e = resolve("nobody", &listed).expect_err("not on the list");
        assert!(e.contains("not one this worker runs tasks as (--tenants etl)"), "{e}");
        if Uid::effective().is_root() {
            let e = resolve("", &open).expect_err("no tenant on a root worker");
            assert!(e.contains("--allow-root-tasks"), "{e}");
            let nobody = resolve("nobody", &open).expect("nobody").expect("another user");
            assert!(nobody.uid != 0 && nobody.name == "nobody");
            assert_eq!(resolve("", &TenantPolicy { allowed: None, allow_root: true }), Ok(None));
        } else {
            assert_eq!(resolve("", &open), Ok(None), "the worker's own user");
            let e = resolve("nobody", &open).expect_err("cannot switch");
            assert!(e.contains("start it as root"), "{e}");
        }
    }
}
