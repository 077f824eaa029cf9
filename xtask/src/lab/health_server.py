# The health endpoint every lab backend runs (started by servers.rs): argv[1] is its name,
# argv[2] the file holding what it answers.
import http.server, socket, sys, threading, time
name, mode_file = sys.argv[1], sys.argv[2]
turn = [0]
lock = threading.Lock()
def mode():
    try:
        with open(mode_file) as f:
            return f.read().strip() or "200"
    except OSError:
        return "200"
class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def answer(self, body):
        m = mode()
        if m == "hang":
            time.sleep(60)
            return
        if m == "alternate":
            with lock:
                turn[0] += 1
                code = 200 if turn[0] % 2 else 503
        else:
            code = int(m)
        text = (name + " " + str(code) + "\n").encode()
        self.send_response(code)
        self.send_header("Content-Length", str(len(text)))
        self.send_header("Connection", "close")
        self.end_headers()
        if body:
            self.wfile.write(text)
    def do_GET(self):
        self.answer(True)
    def do_HEAD(self):
        self.answer(False)
    def log_message(self, *args):
        pass
class Server(http.server.ThreadingHTTPServer):
    address_family = socket.AF_INET6
    daemon_threads = True
    def server_bind(self):
        self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        super().server_bind()
Server(("::", 8081), Handler).serve_forever()
