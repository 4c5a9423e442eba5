-- S-renew: every request carries a different, pre-created session cookie, taken in order
-- from a file (one cookie value per line, all the same length), so that each takes the
-- renewal path once.
--   wrk -t1 ... -s renew.lua URL -- <cookie file> <cookie name>
-- Use -t1: each wrk thread has its own Lua state and would replay the same cookies.
--
-- Client cost matters here (wrk calls request() for every request). The file is read in
-- chunks of CHUNK fixed-width lines and request() cuts the next cookie out of the chunk:
-- the live Lua heap stays small. (Holding a million strings, or one huge string, makes
-- LuaJIT's collector run rarely over a huge heap and string table: stalls of tens of
-- milliseconds, i.e. wrong p99s; rewriting a whole chunk at once stalls too.) What the
-- client still costs is measured by bench.py's L0 scenario (bare NGINX driven by this
-- script).
--
-- At the end of the file it starts over; a cookie sent a second time is answered from the
-- renewal grace (no store write), so wraps are counted and printed, and bench.py also
-- counts real renewals in the NGINX access log.

local dir = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
dofile(dir .. "report.lua")
local report_done = done

local CHUNK = 4096
local file, head, line_len
local data, at, left = "", 1, 0
sent, wraps = 0, 0 -- globals: done() reads them with thread:get()

local function next_chunk()
   data = file:read(line_len * CHUNK)
   if not data then
      file:seek("set", 0)
      wraps = wraps + 1
      data = assert(file:read(line_len * CHUNK), "empty cookie file")
   end
   assert(#data % line_len == 0, "cookie values must all have the same length")
   at, left = 1, #data / line_len
end

function init(args)
   local name = args[2] or "sid"
   head = "GET " .. (wrk.path or "/") .. " HTTP/1.1\r\nHost: " .. wrk.host .. ":" .. wrk.port
      .. "\r\nCookie: " .. name .. "="
   file = assert(io.open(args[1], "rb"))
   line_len = #assert(file:read("*l"), "empty cookie file") + 1
   file:seek("set", 0)
end

function request()
   if left == 0 then
      next_chunk()
   end
   local value = data:sub(at, at + line_len - 2)
   at, left, sent = at + line_len, left - 1, sent + 1
   return head .. value .. "\r\n\r\n"
end

local threads = {}

function setup(thread)
   threads[#threads + 1] = thread
end

function done(summary, latency, requests)
   report_done(summary, latency, requests)
   for _, t in ipairs(threads) do
      io.write(string.format("RENEW sent=%d wraps=%d\n", t:get("sent"), t:get("wraps")))
   end
end
