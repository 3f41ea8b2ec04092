-- wrk script for bench/config.py: every connection is one node, from its own address.
--
-- wrk cannot pick source addresses, so the client namespace's nftables does:
-- thread j connects to server address DST_BASE+j, and the rule for that
-- address SNATs each new connection to the next address of thread j's share
-- of the fleet ("numgen inc"). Thread j owns nodes j, j+T, j+2T, ...; its k-th
-- connection comes from the address of node j+(k mod M)*T. With one connection
-- per thread, the Lua below knows which connection it is on and sends that
-- node's per-boot token: the server checks address and token exactly as it
-- does for real nodes. After REQS requests a connection says
-- "Connection: close" and the next node takes over.
--
-- Settings come from the environment (setup() runs before wrk hands over arguments):
-- FB_TOKENS (file, one token per node), FB_NODES, FB_THREADS, FB_PER_CONN,
-- FB_DST_PREFIX + FB_DST_FIRST (thread j connects to prefix..(first+j)), FB_PORT,
-- FB_WITHOUT_TOKEN=1 (no token: the node is known by its address alone, public variant).

local counter = 0

function setup(thread)
   local dst = os.getenv("FB_DST_PREFIX") .. (tonumber(os.getenv("FB_DST_FIRST")) + counter)
   thread.addr = wrk.lookup(dst, os.getenv("FB_PORT"))[1]
   thread:set("tid", counter)
   counter = counter + 1
end

function init(args)
   tokens = {}
   for line in io.lines(os.getenv("FB_TOKENS")) do
      tokens[#tokens + 1] = line
   end
   nodes = tonumber(os.getenv("FB_NODES"))
   threads = tonumber(os.getenv("FB_THREADS"))
   per_conn = tonumber(os.getenv("FB_PER_CONN"))
   without_token = os.getenv("FB_WITHOUT_TOKEN") == "1" -- address identity only
   mine = math.floor((nodes - 1 - tid) / threads) + 1 -- this thread's share of the fleet
   conn, sent = 0, 0
   keep, close = {}, {}
end

local function build(i, last)
   local headers = { ["Host"] = "fleetboot" }
   if not without_token then
      headers["X-Fleetboot-Token"] = tokens[i + 1]
   end
   if last then
      headers["Connection"] = "close"
   end
   return wrk.format("GET", "/v1/self/config", headers)
end

function request()
   local i = tid + (conn % mine) * threads
   sent = sent + 1
   if sent % per_conn == 0 then
      conn = conn + 1
      local r = close[i]
      if r == nil then
         r = build(i, true)
         close[i] = r
      end
      return r
   end
   local r = keep[i]
   if r == nil then
      r = build(i, false)
      keep[i] = r
   end
   return r
end

function done(summary, latency, requests)
   local e = summary.errors
   io.write(string.format(
      "BENCH requests=%d duration_us=%d p50_us=%d p99_us=%d max_us=%d " ..
      "connect=%d read=%d write=%d status=%d timeout=%d\n",
      summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
      latency.max, e.connect, e.read, e.write, e.status, e.timeout))
end
