//! What a member of a namespace may do (ARCHITECTURE §3: owner, editor, viewer).
//! The role is parsed once, where it is read from `namespace_members.role`; a string
//! this server does not know gives no access at all.

/// A member's role in a namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Role {
    /// Manages members, reads and writes (the namespace's creator).
    Owner,
    /// Reads and writes.
    Editor,
    /// Reads only.
    Viewer,
}

impl Role {
    /// The role a stored string names; `None` for any other string.
    pub fn from_db(s: &str) -> Option<Self> {
        match s {
            "owner" => Some(Self::Owner),
            "editor" => Some(Self::Editor),
            "viewer" => Some(Self::Viewer),
            _ => None,
        }
    }

    /// The string stored for this role.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Owner => "owner",
            Self::Editor => "editor",
            Self::Viewer => "viewer",
        }
    }

    /// May read files, chunks and the journal.
    pub fn can_read(self) -> bool {
        matches!(self, Self::Owner | Self::Editor | Self::Viewer)
    }

    /// May upload chunks and commit, delete, rename or restore files.
    pub fn can_write(self) -> bool {
        matches!(self, Self::Owner | Self::Editor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_role_round_trips_through_its_stored_string() {
        for r in [Role::Owner, Role::Editor, Role::Viewer] {
            assert_eq!(Role::from_db(r.as_str()), Some(r));
        }
    }

    #[test]
    fn an_unknown_role_string_grants_nothing() {
        for s in ["", "Owner", "editor ", "admin", "writer", "viewers"] {
            assert_eq!(Role::from_db(s), None, "{s:?}");
        }
    }

    #[test]
    fn only_owners_and_editors_write() {
        assert!(Role::Owner.can_write());
        assert!(Role::Editor.can_write());
        assert!(!Role::Viewer.can_write());
        assert!(Role::Viewer.can_read());
    }
}
