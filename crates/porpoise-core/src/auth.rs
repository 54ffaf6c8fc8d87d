//! Who may do what through AdminService: three roles, each allowing what the one below it does
//! and more, and the role each call needs. Anything not listed needs `admin`.

use std::fmt;

/// What a token lets its holder do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Role {
    /// Reads workflows, runs, logs, task groups, schedules and backfills.
    Viewer,
    /// Also starts, stops, pauses, resumes and reruns runs, kills tasks, marks them successful,
    /// pauses and resumes schedules and starts backfills.
    Operator,
    /// Also applies workflows, manages task groups, schedules and tokens.
    Admin,
}

impl Role {
    pub const ALL: [Role; 3] = [Role::Viewer, Role::Operator, Role::Admin];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Viewer => "viewer",
            Self::Operator => "operator",
            Self::Admin => "admin",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Role {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| format!("unknown role {s:?} (expected viewer, operator or admin)"))
    }
}

/// The role an AdminService call (its method name, as in `/porpoise.v1.AdminService/StartRun`)
/// needs. A call not listed here needs `admin`, so a new call is closed until it is placed.
pub fn required_role(method: &str) -> Role {
    match method {
        "ListWorkflows" | "GetWorkflow" | "GetRun" | "WaitRun" | "ListRuns" | "ListTaskGroups" | "ListSchedules"
        | "GetSchedule" | "GetBackfill" | "GetTaskLog" => Role::Viewer,
        "StartRun" | "StopRun" | "PauseRun" | "ResumeRun" | "RerunRun" | "KillTask" | "MarkTaskSuccess"
        | "PauseSchedule" | "ResumeSchedule" | "StartBackfill" => Role::Operator,
        _ => Role::Admin,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_role_allows_what_the_one_below_does() {
        assert!(Role::Viewer < Role::Operator && Role::Operator < Role::Admin);
        assert_eq!(required_role("GetRun"), Role::Viewer);
        assert_eq!(required_role("StartRun"), Role::Operator);
        assert_eq!(required_role("ApplyWorkflow"), Role::Admin);
        assert_eq!(required_role("CreateToken"), Role::Admin);
        assert_eq!(required_role("SomethingNew"), Role::Admin, "an unplaced call is closed");
        for role in Role::ALL {
            assert_eq!(role.as_str().parse::<Role>(), Ok(role));
        }
        assert!("root".parse::<Role>().is_err());
    }
}
