//! A small HTTP server on 127.0.0.1 for end-to-end tests: records every request it receives
//! (with when it arrived) and answers as told.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::cluster::WAIT;

/// What the test server answers.
#[derive(Clone)]
pub enum Answer {
    /// 200 `ok`.
    Ok,
    /// 302 to this URL.
    RedirectTo(String),
    /// A 200 response of this many bytes of `[0,0,…`, written as fast as the client reads.
    Large(usize),
    /// Nothing: the request is read and the connection held open without an answer.
    Hang,
    /// 503, as a receiver that is down; the request is not recorded.
    Unavailable,
    /// 200 `ok`, after this long (a slow receiver).
    OkAfter(Duration),
}

/// An HTTP server on 127.0.0.1 recording the requests it receives (connections that sent nothing
/// are not requests).
pub struct TestServer {
    /// Its port.
    pub port: u16,
    answer: Arc<Mutex<Answer>>,
    requests: Arc<Mutex<Vec<(Instant, String)>>>,
    written: Arc<AtomicUsize>,
}

impl TestServer {
    /// Starts a server answering every request with `answer`.
    pub fn start(answer: Answer) -> TestServer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let written = Arc::new(AtomicUsize::new(0));
        let answer = Arc::new(Mutex::new(answer));
        let (seen, counter, answers) = (requests.clone(), written.clone(), answer.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming().map_while(Result::ok) {
                let (answers, seen, counter) = (answers.clone(), seen.clone(), counter.clone());
                std::thread::spawn(move || serve(stream, &answers, &seen, &counter));
            }
        });
        TestServer { port, answer, requests, written }
    }

    /// Answers the requests that arrive from now on with `answer`.
    pub fn answer_with(&self, answer: Answer) {
        *self.answer.lock().unwrap() = answer;
    }

    /// Its base URL.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}/", self.port)
    }

    /// Every request so far, head and body.
    pub fn requests(&self) -> Vec<String> {
        self.requests.lock().unwrap().iter().map(|(_, text)| text.clone()).collect()
    }

    /// Every request so far with the moment it was complete.
    pub fn timed_requests(&self) -> Vec<(Instant, String)> {
        self.requests.lock().unwrap().clone()
    }

    /// Bytes of a [`Answer::Large`] response written so far.
    pub fn written(&self) -> usize {
        self.written.load(Ordering::SeqCst)
    }

    /// Waits until at least `count` requests arrived, and returns them.
    pub fn wait_for_requests(&self, count: usize) -> Vec<String> {
        let start = Instant::now();
        loop {
            let requests = self.requests();
            if requests.len() >= count {
                return requests;
            }
            assert!(start.elapsed() < WAIT, "the server got {} of {count} requests", requests.len());
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

fn serve(mut stream: TcpStream, answer: &Mutex<Answer>, seen: &Mutex<Vec<(Instant, String)>>, written: &AtomicUsize) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    let mut request = Vec::new();
    let mut buffer = [0; 4096];
    while let Ok(read @ 1..) = stream.read(&mut buffer) {
        request.extend_from_slice(&buffer[..read]);
        let text = String::from_utf8_lossy(&request).to_string();
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let length = head
                .lines()
                .find_map(|line| line.to_ascii_lowercase().strip_prefix("content-length:").map(str::to_string))
                .and_then(|value| value.trim().parse::<usize>().ok())
                .unwrap_or(0);
            if body.len() >= length {
                break;
            }
        }
    }
    // A connection the egress policy closed right after connecting sent nothing: not a request.
    if request.is_empty() {
        return;
    }
    let answer = answer.lock().unwrap().clone();
    if let Answer::Unavailable = answer {
        let _ = stream.write_all(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
        return;
    }
    seen.lock().unwrap().push((Instant::now(), String::from_utf8_lossy(&request).to_string()));
    let head = match &answer {
        Answer::Ok => "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok".to_string(),
        Answer::RedirectTo(url) => {
            format!("HTTP/1.1 302 Found\r\nLocation: {url}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
        }
        Answer::Large(_) => "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n\r\n".into(),
        Answer::Hang => {
            std::thread::sleep(Duration::from_secs(3600));
            return;
        }
        Answer::Unavailable => return,
        Answer::OkAfter(delay) => {
            std::thread::sleep(*delay);
            "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok".to_string()
        }
    };
    if stream.write_all(head.as_bytes()).is_err() {
        return;
    }
    if let Answer::Large(total) = &answer {
        let piece = format!("[{}", "0,".repeat(32 * 1024 - 1));
        while written.load(Ordering::SeqCst) < *total {
            if stream.write_all(piece.as_bytes()).is_err() {
                return;
            }
            written.fetch_add(piece.len(), Ordering::SeqCst);
        }
    }
}
