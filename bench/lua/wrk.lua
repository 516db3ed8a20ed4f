-- wrk script used for every wrk run of the benchmark.
-- Arguments (after `--`): depth method body_bytes delay_ms
--   depth       requests written back to back per send (pipelining; 1 = none)
--   method      GET or POST
--   body_bytes  size of the POST body ("x" repeated)
--   delay_ms    pause before each request on a connection (paced, closed-loop rate;
--               0 = as fast as possible)
-- Headers given with wrk -H go on every request (e.g. "Connection: close").
-- done() prints one JSON line, prefixed with "BENCH_JSON ", that bench/run.py parses.

local pause = 0

function init(args)
   local depth = tonumber(args[1]) or 1
   local method = args[2] or "GET"
   local size = tonumber(args[3]) or 0
   pause = tonumber(args[4]) or 0
   local body = nil
   -- wrk.format() ignores wrk.headers (the -H options) when given a table: copy them in,
   -- but for the Host wrk.init() put there ("host:port"; format() adds the bare host, as
   -- every run before -H was passed through)
   local headers = {}
   for name, value in pairs(wrk.headers) do
      if name ~= "Host" then
         headers[name] = value
      end
   end
   if size > 0 then
      body = string.rep("x", size)
      headers["Content-Type"] = "application/octet-stream"
   end
   local one = wrk.format(method, nil, headers, body)
   local r = {}
   for i = 1, depth do
      r[i] = one
   end
   req = table.concat(r)
end

function request()
   return req
end

if tonumber(os.getenv("BENCH_WRK_DELAY") or "0") > 0 then
   -- wrk only paces when delay() exists, so define it only when asked for.
   function delay()
      return pause
   end
end

function done(summary, latency, requests)
   local e = summary.errors
   local p = {}
   for _, q in ipairs({50, 90, 99, 99.9}) do
      p[#p + 1] = string.format('"%s": %d', tostring(q), latency:percentile(q))
   end
   io.write(string.format(
      'BENCH_JSON {"requests": %d, "duration_us": %d, "bytes": %d, ' ..
      '"connect": %d, "read": %d, "write": %d, "status": %d, "timeout": %d, ' ..
      '"latency_us": {"mean": %.1f, "max": %d, %s}}\n',
      summary.requests, summary.duration, summary.bytes,
      e.connect, e.read, e.write, e.status, e.timeout,
      latency.mean, latency.max, table.concat(p, ", ")))
end
