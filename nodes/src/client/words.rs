//! What the user types and what the client prints, in the original system's words.

use tsn_protocol::client::{ClientReply, CommandError};
use tsn_protocol::UserId;

/// A parsed command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// FOLLOW <id>
    Follow(UserId),
    /// UNFOLLOW <id>
    Unfollow(UserId),
    /// LIST
    List,
    /// TIMELINE
    Timeline,
}

/// Printed after a successful command.
pub const SUCCESS: &str = "Command completed successfully";
/// Printed when a command fails for a reason the original had no words for.
pub const UNKNOWN_FAILURE: &str = "Command failed with unknown reason";
/// Printed once the timeline is open.
pub const IN_TIMELINE: &str = "Now you are in the timeline";

/// The original's start banner, shown on a terminal.
pub const BANNER: &str = "\n========= TINY SNS CLIENT =========
 Command Lists and Format:
 FOLLOW <username>
 UNFOLLOW <username>
 LIST
 TIMELINE
=====================================";

/// Shown on a terminal after [`IN_TIMELINE`].
pub const TIMELINE_HINT: &str =
    "Type a message and press Enter to post it; Ctrl-D (or Ctrl-C) leaves.";

/// The original's words when started without arguments.
pub const CALLING_CONVENTION: &str = "Calling convention for client:

./tsn_client -c <coordIP>:<coordPort> -p <clientPort> -i <clientID>
";

/// Parses one typed line (case-insensitive). `Ok(None)` for a blank line; `Err` holds
/// the message to print.
///
/// Odd input gets the original's answer where that helps the user: `FOLLOW 2 3` is
/// refused as an invalid command (the original wanted exactly one argument), `LIST x` and
/// `TIMELINE x` run as if the argument were not there (so did the original). A bare
/// `FOLLOW` gets `Invalid Input -- No Arguments Given` (the original said
/// `Invalid Command`, which does not tell what is missing), and a blank line just asks
/// again (the original said `Invalid Command`).
pub fn parse(line: &str) -> Result<Option<Command>, &'static str> {
    let mut parts = line.split_whitespace();
    let Some(word) = parts.next() else {
        return Ok(None);
    };
    let word = word.to_ascii_uppercase();
    let arg = parts.next();
    let extra = parts.next().is_some();
    let target = |arg: Option<&str>| -> Result<UserId, &'static str> {
        let arg = arg.ok_or("Invalid Input -- No Arguments Given")?;
        if extra {
            return Err(INVALID_COMMAND);
        }
        arg.parse::<UserId>()
            .map_err(|_| "Command failed with invalid username")
    };
    match word.as_str() {
        "FOLLOW" => Ok(Some(Command::Follow(target(arg)?))),
        "UNFOLLOW" => Ok(Some(Command::Unfollow(target(arg)?))),
        "LIST" => Ok(Some(Command::List)),
        "TIMELINE" => Ok(Some(Command::Timeline)),
        _ => Err("Invalid Command"),
    }
}

/// The original's answer to a command it could not make sense of.
const INVALID_COMMAND: &str = "Command failed with invalid command";

/// The message for a failed command.
pub fn failure(e: &CommandError) -> &'static str {
    match e {
        CommandError::AlreadyExists => "Input username already exists, command failed",
        CommandError::NoSuchUser => "Input username does not exists, command failed",
        CommandError::InvalidUser => "Command failed with invalid username",
        CommandError::InvalidCommand => INVALID_COMMAND,
        CommandError::RateLimited { .. } => {
            "Too many requests from this user: slow down (nothing was stored)"
        }
        CommandError::KeyMismatch { .. } | CommandError::BadProof => {
            "Login refused: this client does not hold the user's key"
        }
        CommandError::NotActive
        | CommandError::PostTooLong { .. }
        | CommandError::ControlChar { .. }
        | CommandError::Storage(_) => UNKNOWN_FAILURE,
    }
}

fn id_list(ids: &[UserId]) -> String {
    ids.iter().map(|id| format!("{id}, ")).collect()
}

/// The lines printed for a reply.
pub fn reply_lines(reply: &ClientReply) -> Vec<String> {
    match reply {
        ClientReply::Ok => vec![SUCCESS.to_string()],
        ClientReply::Challenge(_) => vec![UNKNOWN_FAILURE.to_string()],
        ClientReply::List {
            all_users,
            followers,
        } => vec![
            SUCCESS.to_string(),
            format!("All users: {}", id_list(all_users)),
            format!("Followers: {}", id_list(followers)),
        ],
        ClientReply::Failed(e) => vec![failure(e).to_string()],
    }
}

/// A timeline entry as the original printed it: `<sender> (<ctime>) >> <message>`.
pub fn entry_line(post: &tsn_protocol::Post) -> String {
    post_line(post.id.author, post.ts_us, &post.text)
}

/// `<sender> (<ctime>) >> <message>`, with `<ctime>` in local time like C's `ctime`, and
/// every character of the message that would be a command to the terminal shown escaped
/// (`\x1b`, `\u{202e}`; see [`tsn_protocol::escape_controls`]): on a terminal or a pipe,
/// another user's text cannot move the cursor, set the title, colour the output or make a
/// line that seems to come from someone else. Servers refuse such posts; these come from
/// data stored before that, or from other versions.
pub fn post_line(author: UserId, ts_us: i64, text: &str) -> String {
    use chrono::TimeZone;
    let when = chrono::Local
        .timestamp_micros(ts_us)
        .single()
        .map(|t| t.format("%a %b %e %H:%M:%S %Y").to_string())
        .unwrap_or_else(|| ts_us.to_string());
    let text = tsn_protocol::escape_controls(text);
    format!("{author} ({when}) >> {text}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_are_case_insensitive_and_checked() {
        assert_eq!(parse("follow 3"), Ok(Some(Command::Follow(3))));
        assert_eq!(parse("  UnFollow   12 "), Ok(Some(Command::Unfollow(12))));
        assert_eq!(parse("list"), Ok(Some(Command::List)));
        assert_eq!(parse("Timeline"), Ok(Some(Command::Timeline)));
        assert_eq!(parse(""), Ok(None));
        assert_eq!(parse("FOLLOW"), Err("Invalid Input -- No Arguments Given"));
        assert_eq!(
            parse("FOLLOW abc"),
            Err("Command failed with invalid username")
        );
        assert_eq!(
            parse("FOLLOW -1"),
            Err("Command failed with invalid username")
        );
        assert_eq!(parse("POST hi"), Err("Invalid Command"));
    }

    #[test]
    fn extra_arguments_follow_the_original() {
        assert_eq!(
            parse("FOLLOW 2 3"),
            Err("Command failed with invalid command")
        );
        assert_eq!(
            parse("unfollow 2 x"),
            Err("Command failed with invalid command")
        );
        assert_eq!(parse("LIST everything"), Ok(Some(Command::List)));
        assert_eq!(parse("TIMELINE now"), Ok(Some(Command::Timeline)));
    }

    #[test]
    fn a_message_cannot_command_the_terminal() {
        let line = post_line(3, 0, "\r\x1b[2K\x1b[1A3 (Wed) >> forged\u{9b}31m\u{202e}");
        assert!(line.starts_with("3 ("), "{line}");
        assert!(line.ends_with(") >> \\x0d\\x1b[2K\\x1b[1A3 (Wed) >> forged\\u{9b}31m\\u{202e}"));
        assert!(!line.contains(tsn_protocol::is_control_char));
    }

    #[test]
    fn list_is_printed_like_the_original() {
        let lines = reply_lines(&ClientReply::List {
            all_users: vec![1, 2, 3],
            followers: vec![2],
        });
        assert_eq!(
            lines,
            vec![SUCCESS, "All users: 1, 2, 3, ", "Followers: 2, "]
        );
    }
}
