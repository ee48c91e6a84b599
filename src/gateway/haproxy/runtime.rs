//! A client for HAProxy's runtime API (the "stats socket"), in non-interactive mode: one
//! command per connection, the answer is everything until HAProxy closes it.
//!
//! Answers are parsed strictly: a `set` command answers nothing but blank lines on success, so
//! any text is HAProxy's error; a `show` answer must have the header this client knows, and a
//! line that does not fit it fails the whole answer rather than being guessed at.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpStream, UnixStream};

/// The most we read of one answer; `show stat` of a very large configuration fits easily.
const MAX_ANSWER_BYTES: u64 = 16 * 1024 * 1024;

/// Where a runtime API listens: `host:port` or `unix:/path`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RuntimeAddress {
    Tcp(String),
    Unix(PathBuf),
}

impl RuntimeAddress {
    pub fn parse(address: &str) -> Self {
        match address.strip_prefix("unix:") {
            Some(path) => Self::Unix(PathBuf::from(path)),
            None => Self::Tcp(address.to_owned()),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("cannot talk to the runtime API: {0}")]
    Io(#[from] std::io::Error),
    #[error("the runtime API did not answer `{command}` within {timeout:?}")]
    Timeout { command: String, timeout: Duration },
    /// HAProxy's own error line ("No such server.", "Permission denied", ...).
    #[error("HAProxy refused `{command}`: {message}")]
    Refused { command: String, message: String },
    #[error("cannot parse HAProxy's answer to `{command}`: {reason}")]
    Malformed { command: String, reason: String },
    #[error("`{0}` cannot be sent: names with spaces, `;` or control characters are not passed on")]
    UnsafeName(String),
}

impl RuntimeError {
    /// Whether asking again may help: a node restarting or slow, not a refusal.
    pub fn is_retryable(&self) -> bool {
        matches!(self, Self::Io(_) | Self::Timeout { .. })
    }
}

/// One server line of `show servers state`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerState {
    pub backend: String,
    pub server: String,
    /// `None` when HAProxy has no address for it yet (an unresolved FQDN).
    pub address: Option<IpAddr>,
    pub port: Option<u16>,
    /// The weight in effect as set at runtime.
    pub weight: u32,
    /// The weight from HAProxy's configuration.
    pub configured_weight: u32,
}

/// Current sessions of one server, from `show stat`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerSessions {
    pub backend: String,
    pub server: String,
    pub sessions: u64,
}

pub struct RuntimeApi {
    address: RuntimeAddress,
    timeout: Duration,
}

impl RuntimeApi {
    pub fn new(address: &str, timeout: Duration) -> Self {
        Self {
            address: RuntimeAddress::parse(address),
            timeout,
        }
    }

    pub async fn servers_state(&self) -> Result<Vec<ServerState>, RuntimeError> {
        let command = "show servers state";
        let answer = self.exchange(command).await?;
        parse_servers_state(&answer).map_err(|e| e.for_command(command))
    }

    /// Current sessions of every server of every backend.
    pub async fn sessions(&self) -> Result<Vec<ServerSessions>, RuntimeError> {
        // -1 4 -1: every proxy, servers only, every server id.
        let command = "show stat -1 4 -1";
        let answer = self.exchange(command).await?;
        parse_stat_sessions(&answer).map_err(|e| e.for_command(command))
    }

    /// `set server <backend>/<server> state <state>` (`ready`, `drain` or `maint`).
    pub async fn set_state(
        &self,
        backend: &str,
        server: &str,
        state: &str,
    ) -> Result<(), RuntimeError> {
        let command = format!(
            "set server {}/{} state {state}",
            safe(backend)?,
            safe(server)?
        );
        self.exchange_silent(&command).await
    }

    /// `set weight <backend>/<server> <weight>` (absolute, 0–256).
    pub async fn set_weight(
        &self,
        backend: &str,
        server: &str,
        weight: u32,
    ) -> Result<(), RuntimeError> {
        let command = format!("set weight {}/{} {weight}", safe(backend)?, safe(server)?);
        self.exchange_silent(&command).await
    }

    /// A command that answers nothing on success.
    async fn exchange_silent(&self, command: &str) -> Result<(), RuntimeError> {
        let answer = self.exchange(command).await?;
        expect_silence(&answer).map_err(|e| e.for_command(command))
    }

    async fn exchange(&self, command: &str) -> Result<String, RuntimeError> {
        let exchange = async {
            match &self.address {
                RuntimeAddress::Tcp(address) => {
                    let stream = TcpStream::connect(address.as_str()).await?;
                    // Commands are one small write; waiting to fill a segment only adds latency.
                    stream.set_nodelay(true)?;
                    talk(stream, command).await
                }
                RuntimeAddress::Unix(path) => talk(UnixStream::connect(path).await?, command).await,
            }
        };
        tokio::time::timeout(self.timeout, exchange)
            .await
            .map_err(|_| RuntimeError::Timeout {
                command: command.to_owned(),
                timeout: self.timeout,
            })?
    }
}

async fn talk<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    command: &str,
) -> Result<String, RuntimeError> {
    stream.write_all(format!("{command}\n").as_bytes()).await?;
    stream.flush().await?;
    let mut answer = Vec::new();
    (&mut stream)
        .take(MAX_ANSWER_BYTES + 1)
        .read_to_end(&mut answer)
        .await?;
    if answer.len() as u64 > MAX_ANSWER_BYTES {
        return Err(RuntimeError::Malformed {
            command: command.to_owned(),
            reason: format!("the answer is larger than {MAX_ANSWER_BYTES} bytes"),
        });
    }
    String::from_utf8(answer).map_err(|_| RuntimeError::Malformed {
        command: command.to_owned(),
        reason: "the answer is not UTF-8".into(),
    })
}

/// Backend and server names come from HAProxy's own answers, but a name that could end the
/// command or start another one is never sent.
fn safe(name: &str) -> Result<&str, RuntimeError> {
    if name.is_empty()
        || name
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || c == ';' || c == '/')
    {
        return Err(RuntimeError::UnsafeName(name.escape_debug().to_string()));
    }
    Ok(name)
}

/// A parse failure before the command is known to it.
#[derive(Debug, PartialEq, Eq)]
enum AnswerError {
    Refused(String),
    Malformed(String),
}

impl AnswerError {
    fn for_command(self, command: &str) -> RuntimeError {
        let command = command.to_owned();
        match self {
            Self::Refused(message) => RuntimeError::Refused { command, message },
            Self::Malformed(reason) => RuntimeError::Malformed { command, reason },
        }
    }
}

fn non_blank_lines(answer: &str) -> impl Iterator<Item = &str> {
    answer.lines().filter(|line| !line.trim().is_empty())
}

/// HAProxy's error text, first lines only, as one line.
fn refusal(answer: &str) -> AnswerError {
    let text: Vec<&str> = non_blank_lines(answer).map(str::trim).take(3).collect();
    AnswerError::Refused(text.join(" / ").chars().take(300).collect())
}

fn column_of(header: &[&str], name: &str) -> Result<usize, AnswerError> {
    header
        .iter()
        .position(|c| *c == name)
        .ok_or_else(|| AnswerError::Malformed(format!("the header has no `{name}` column")))
}

/// Fails a line whose field count is not the header's: a truncated or changed format.
fn check_width(
    what: &str,
    index: usize,
    fields: &[&str],
    header: &[&str],
) -> Result<(), AnswerError> {
    if fields.len() == header.len() {
        return Ok(());
    }
    Err(AnswerError::Malformed(format!(
        "{what} {} has {} fields, the header {}",
        index + 1,
        fields.len(),
        header.len()
    )))
}

fn expect_silence(answer: &str) -> Result<(), AnswerError> {
    if non_blank_lines(answer).next().is_none() {
        Ok(())
    } else {
        Err(refusal(answer))
    }
}

/// Reads `show servers state` (format version 1, HAProxy 1.8 and later).
fn parse_servers_state(answer: &str) -> Result<Vec<ServerState>, AnswerError> {
    let mut lines = non_blank_lines(answer);
    match lines.next().map(str::trim) {
        Some("1") => {}
        Some(version) if version.parse::<u32>().is_ok() => {
            return Err(AnswerError::Malformed(format!(
                "format version {version}; this client reads version 1"
            )));
        }
        _ => return Err(refusal(answer)),
    }
    let header: Vec<&str> = match lines.next().and_then(|line| line.strip_prefix("# ")) {
        Some(header) => header.split_whitespace().collect(),
        None => {
            return Err(AnswerError::Malformed(
                "no `# be_id ...` header line".into(),
            ));
        }
    };
    let column = |name: &str| column_of(&header, name);
    let (backend, server, address, port, weight, configured_weight) = (
        column("be_name")?,
        column("srv_name")?,
        column("srv_addr")?,
        column("srv_port")?,
        column("srv_uweight")?,
        column("srv_iweight")?,
    );
    lines
        .enumerate()
        .map(|(index, line)| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            check_width("server line", index, &fields, &header)?;
            let number = |at: usize| {
                fields[at].parse::<u32>().map_err(|_| {
                    AnswerError::Malformed(format!(
                        "server line {}: `{}` is not a number in column {}",
                        index + 1,
                        fields[at],
                        header[at]
                    ))
                })
            };
            Ok(ServerState {
                backend: fields[backend].to_owned(),
                server: fields[server].to_owned(),
                address: fields[address].parse().ok(),
                port: fields[port].parse().ok(),
                weight: number(weight)?,
                configured_weight: number(configured_weight)?,
            })
        })
        .collect()
}

/// Reads the `scur` column of `show stat` (CSV) for server rows.
fn parse_stat_sessions(answer: &str) -> Result<Vec<ServerSessions>, AnswerError> {
    let mut lines = non_blank_lines(answer);
    let header: Vec<&str> = match lines.next().and_then(|line| line.strip_prefix("# ")) {
        Some(header) => header.split(',').collect(),
        None => return Err(refusal(answer)),
    };
    let column = |name: &str| column_of(&header, name);
    let (backend, server, sessions) = (column("pxname")?, column("svname")?, column("scur")?);
    let mut rows = Vec::new();
    for (index, line) in lines.enumerate() {
        let fields: Vec<&str> = line.split(',').collect();
        check_width("row", index, &fields, &header)?;
        // Frontend and backend totals share the table; only servers matter here.
        if matches!(fields[server], "FRONTEND" | "BACKEND") {
            continue;
        }
        let count = fields[sessions].parse::<u64>().map_err(|_| {
            AnswerError::Malformed(format!(
                "row {}: `{}` is not a session count",
                index + 1,
                fields[sessions]
            ))
        })?;
        rows.push(ServerSessions {
            backend: fields[backend].to_owned(),
            server: fields[server].to_owned(),
            sessions: count,
        });
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    // Captured from HAProxy 2.6.12 (Debian bookworm) with two backends sharing one server.
    const SERVERS_STATE: &str = "1\n# be_id be_name srv_id srv_name srv_addr srv_op_state srv_admin_state srv_uweight srv_iweight srv_time_since_last_change srv_check_status srv_check_result srv_check_health srv_check_state srv_agent_state bk_f_forced_id srv_f_forced_id srv_fqdn srv_port srvrecord srv_use_ssl srv_check_port srv_check_addr srv_agent_addr srv_agent_port\n3 app 1 s1 127.0.0.2 2 8 10 100 0 1 0 2 0 0 0 0 - 18081 - 0 0 - - 0\n3 app 2 s2 127.0.0.3 2 0 50 50 1 1 0 2 0 0 0 0 - 18082 - 0 0 - - 0\n4 pinned 1 a 127.0.0.2 2 0 1 1 1 1 0 2 0 0 0 0 - 18081 - 0 0 - - 0\n\n";

    const STAT_HEADER: &str = "# pxname,svname,qcur,qmax,scur,smax,slim,stot,bin,bout,dreq,dresp,ereq,econ,eresp,wretr,wredis,status,weight,act,bck,chkfail,chkdown,lastchg,downtime,qlimit,pid,iid,sid,throttle,lbtot,tracked,type,rate,rate_lim,rate_max,check_status,check_code,check_duration,hrsp_1xx,hrsp_2xx,hrsp_3xx,hrsp_4xx,hrsp_5xx,hrsp_other,hanafail,req_rate,req_rate_max,req_tot,cli_abrt,srv_abrt,comp_in,comp_out,comp_byp,comp_rsp,lastsess,last_chk,last_agt,qtime,ctime,rtime,ttime,agent_status,agent_code,agent_duration,check_desc,agent_desc,check_rise,check_fall,check_health,agent_rise,agent_fall,agent_health,addr,cookie,mode,algo,conn_rate,conn_rate_max,conn_tot,intercepted,dcon,dses,wrew,connect,reuse,cache_lookups,cache_hits,srv_icur,src_ilim,qtime_max,ctime_max,rtime_max,ttime_max,eint,idle_conn_cur,safe_conn_cur,used_conn_cur,need_conn_est,uweight,agg_server_status,agg_server_check_status,agg_check_status,-,ssl_sess,ssl_reused_sess,ssl_failed_handshake,h2_headers_rcvd,h2_data_rcvd,h2_settings_rcvd,h2_rst_stream_rcvd,h2_goaway_rcvd,h2_detected_conn_protocol_errors,h2_detected_strm_protocol_errors,h2_rst_stream_resp,h2_goaway_resp,h2_open_connections,h2_backend_open_streams,h2_total_connections,h2_backend_total_streams,h1_open_connections,h1_open_streams,h1_total_connections,h1_total_streams,h1_bytes_in,h1_bytes_out,h1_spliced_bytes_in,h1_spliced_bytes_out,\n";
    const STAT_ROW_S1: &str = "app,s1,0,0,3,0,,0,0,0,,0,,0,0,0,0,no check,100,1,0,,,1,,,1,3,1,,0,,2,0,,0,,,,0,0,0,0,0,0,,,,0,0,0,,,,,-1,,,0,0,0,0,,,,,,,,,,,,127.0.0.2:18081,,http,,,,,,,,0,0,0,,,0,,0,0,0,0,0,0,0,0,0,100,,,,-,0,0,0,,,,,,,,,,,,,,,,,,,,,,\n";

    #[test]
    fn servers_state_is_read_by_column_name() {
        let servers = parse_servers_state(SERVERS_STATE).unwrap();
        assert_eq!(servers.len(), 3);
        assert_eq!(
            servers[0],
            ServerState {
                backend: "app".into(),
                server: "s1".into(),
                address: Some("127.0.0.2".parse().unwrap()),
                port: Some(18081),
                weight: 10,
                configured_weight: 100,
            }
        );
        assert_eq!(servers[2].backend, "pinned");
    }

    #[test]
    fn a_server_line_that_does_not_fit_the_header_fails_the_answer() {
        let truncated = SERVERS_STATE.replace(" - - 0\n3 app 2", "\n3 app 2");
        let error = parse_servers_state(&truncated).unwrap_err();
        assert!(
            matches!(&error, AnswerError::Malformed(reason) if reason.contains("line 1 has 22 fields")),
            "{error:?}"
        );
        let not_a_number = SERVERS_STATE.replace(" 2 8 10 100 ", " 2 8 ten 100 ");
        assert!(matches!(
            parse_servers_state(&not_a_number),
            Err(AnswerError::Malformed(_))
        ));
    }

    #[test]
    fn an_error_line_instead_of_a_table_is_haproxys_refusal() {
        assert_eq!(
            parse_servers_state("Permission denied\n\n"),
            Err(AnswerError::Refused("Permission denied".into()))
        );
        assert_eq!(
            parse_stat_sessions("Unknown command.\n\n"),
            Err(AnswerError::Refused("Unknown command.".into()))
        );
        assert!(matches!(
            parse_servers_state("2\n# be_id\n"),
            Err(AnswerError::Malformed(reason)) if reason.contains("version 2")
        ));
    }

    #[test]
    fn sessions_are_the_scur_column_of_server_rows() {
        let answer = format!("{STAT_HEADER}{STAT_ROW_S1}\n");
        assert_eq!(
            parse_stat_sessions(&answer).unwrap(),
            vec![ServerSessions {
                backend: "app".into(),
                server: "s1".into(),
                sessions: 3,
            }]
        );
        let short_row = format!("{STAT_HEADER}app,s1,0,0,3\n");
        assert!(matches!(
            parse_stat_sessions(&short_row),
            Err(AnswerError::Malformed(_))
        ));
    }

    #[test]
    fn set_commands_succeed_only_on_silence() {
        assert_eq!(expect_silence("\n"), Ok(()));
        assert_eq!(
            expect_silence("No such server.\n\n"),
            Err(AnswerError::Refused("No such server.".into()))
        );
    }

    #[test]
    fn names_that_could_inject_a_command_are_not_sent() {
        assert!(safe("app_v2.backend-1").is_ok());
        for hostile in ["a;shutdown sessions", "a b", "a\nb", "", "a/b"] {
            assert!(safe(hostile).is_err(), "{hostile:?}");
        }
    }
}
