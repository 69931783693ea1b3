-- bench/lib/rotate_tokens.lua: wrk script for bench/run.sh's "tokens" section. Every request
-- carries the next token of a file (one JWT per line) in "Authorization: Bearer <token>".
--
-- usage: wrk -tT ... -s rotate_tokens.lua URL -- TOKEN_FILE T [token|path] [prebuilt]
--   T must equal wrk's -t (wrk does not tell init() how many threads there are).
--   path: the lines are request paths (bench/scale.sh's routes curve), each sent with the
--         token from the environment variable BENCH_BEARER; token (the default): the lines
--         are tokens, sent to the URL's path.
--   prebuilt: every request string is built once in init() and request() only returns it
--         (no string made per request; more memory: the whole request per line).
--
-- Each thread keeps only its share of the file (line k goes to thread (k - 1) % T) and walks it
-- with its own index, so the threads never send the same token at the same moment and the
-- tokens are held once in memory, whatever T is. At the end of a run the position of every
-- thread is saved to TOKEN_FILE.pos<tid>, and the next run with the same file (the next round)
-- continues the rotation there instead of starting over at the first line.
--
-- Without prebuilt, the request is built by concatenating three strings (the head around the
-- token is formatted once with wrk.format). That is not the same Lua cost for 1 token and for
-- 1,000,000: LuaJIT interns every string, so with one token the concatenation finds the same
-- string again, while with many each request makes (and later collects) a new one, hashed into
-- a string table as large as the live set (bench/scale.sh's tokens curve has a control line
-- for this; docs/BENCHMARKS.md "s11-B"). prebuilt makes request() a table read for any count.

local threads = {}
local next_tid = 0

function setup(thread)
   thread:set("tid", next_tid)
   next_tid = next_tid + 1
   table.insert(threads, thread)
end

local tokens = {}
local pre, post

function init(args)
   local file = args[1]
   local nthreads = tonumber(args[2] or "1")
   local kind = args[3] or "token"
   local prebuilt = args[4] == "prebuilt"
   if args[4] and not prebuilt then
      error("rotate_tokens.lua: the 4th argument is prebuilt or nothing, got " .. args[4])
   end
   if kind ~= "token" and kind ~= "path" then
      error("rotate_tokens.lua: the 3rd argument is token or path, got " .. kind)
   end
   if not file or not nthreads or nthreads < 1 then
      error("rotate_tokens.lua: usage: wrk ... -s rotate_tokens.lua URL -- TOKEN_FILE THREADS")
   end
   local k = 0
   local n = 0
   for line in io.lines(file) do
      if #line > 0 then
         if k % nthreads == tid then
            n = n + 1
            tokens[n] = line
         end
         k = k + 1
      end
   end
   if n == 0 then
      error("rotate_tokens.lua: thread " .. tid .. " got no token from " .. file)
   end
   count = n     -- globals: read back by done() through thread:get()
   wraps = 0
   idx = 0
   posfile = file .. ".pos" .. tid
   local f = io.open(posfile, "r")
   if f then
      local p = tonumber(f:read("*l") or "")
      f:close()
      if p and p >= 0 and p < n then idx = p end
   end
   local marker = "@@TOKEN@@"
   local req
   if kind == "path" then
      local bearer = os.getenv("BENCH_BEARER")
      if not bearer or #bearer == 0 then
         error("rotate_tokens.lua: path mode needs BENCH_BEARER")
      end
      req = wrk.format(nil, marker, { ["Authorization"] = "Bearer " .. bearer })
   else
      req = wrk.format(nil, nil, { ["Authorization"] = "Bearer " .. marker })
   end
   local s, e = string.find(req, marker, 1, true)
   pre = string.sub(req, 1, s - 1)
   post = string.sub(req, e + 1)
   if prebuilt then
      for i = 1, n do tokens[i] = pre .. tokens[i] .. post end
      pre, post = "", ""
      request = function()
         idx = idx + 1
         if idx > count then
            idx = 1
            wraps = wraps + 1
         end
         return tokens[idx]
      end
   end
   io.write(string.format("rotate_tokens: thread %d holds %d of %d tokens from %s, starting at %d (Lua heap %.0f MiB)\n",
                          tid, n, k, file, idx, collectgarbage("count") / 1024))
end

function request()
   idx = idx + 1
   if idx > count then
      idx = 1
      wraps = wraps + 1
   end
   return pre .. tokens[idx] .. post
end

function done(summary, latency, requests)
   for _, t in ipairs(threads) do
      local pos, n, w = t:get("idx"), t:get("count"), t:get("wraps")
      local f = io.open(t:get("posfile"), "w")
      if f then
         f:write(tostring(pos), "\n")
         f:close()
      end
      io.write(string.format("rotate_tokens: thread %d stopped at %d of %d tokens (wrapped %d times)\n",
                             t:get("tid"), pos, n, w))
   end
end
