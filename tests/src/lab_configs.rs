//! Config texts several lab tests run the agent with: the lab's echo service (each backend
//! greets with its name on TCP 8080, see `xtask::lab::start_backend_servers`) behind VIP4:80.

/// The listener's text, a literal so that `concat!` can build the consts below from it.
macro_rules! echo_listener {
    () => {
        r#"
[[listener]]
name = "echo"
address = "198.18.1.100"
port = 80
protocol = "tcp"
default_action = { forward = "echo" }
"#
    };
}

/// Listener `echo`: TCP on VIP4 (198.18.1.100) port 80, forwarding to group `echo`, which the
/// config defines beside it.
pub const ECHO_LISTENER: &str = echo_listener!();

/// The group's text, a literal for `concat!` as `echo_listener!`.
macro_rules! echo_group_on_b1 {
    () => {
        r#"
[[target_group]]
name = "echo"
protocol = "tcp"
port = 8080
targets = [{ address = "198.18.0.21" }]
"#
    };
}

/// Group `echo`: b1's TCP port 8080.
pub const ECHO_GROUP_ON_B1: &str = echo_group_on_b1!();

/// `ECHO_GROUP_ON_B1` behind `ECHO_LISTENER`.
pub const ECHO_ON_B1: &str = concat!(echo_group_on_b1!(), echo_listener!());
