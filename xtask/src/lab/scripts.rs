//! Scripts the lab tests run in a host of the lab (`python3 -c SCRIPT ARGS...`).

/// Sends 6,000 malformed frames at a VIP over AF_PACKET, then well-formed control datagrams:
/// `DST_MAC SRC4 VIP4 SRC6 VIP6 PORT CONTROL`; prints "KIND COUNT" lines and "total COUNT".
pub const MALFORMED_FRAMES: &str = include_str!("malformed_frames.py");

/// Counts the frames arriving on eth0 for one TCP/UDP port for a while: `PORT SECONDS`; prints
/// "control N other M" (control: frames carrying b"control").
pub const PORT_COUNTER: &str = include_str!("port_counter.py");
