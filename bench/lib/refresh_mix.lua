-- bench/lib/refresh_mix.lua: wrk script for bench/run.sh's "refresh" section.
--
-- usage: wrk ... -s refresh_mix.lua URL -- FAR_TOKEN MIX_FILE PERCENT
--   FAR_TOKEN  an access token far from expiry, sent as "Authorization: Bearer" on most requests
--   MIX_FILE   lines "ACCESS_TOKEN REFRESH_TOKEN": a near-expiry access token and a refresh
--              token the mock IdP knows (ignored when PERCENT is 0)
--   PERCENT    share of requests (0-100) that carry a near-expiry pair instead: the access token
--              in Authorization plus "Cookie: refresh_token=<refresh token>"; the pairs are used
--              in turn. The share is exact, not random: every (100 / PERCENT)-th request.
--
-- Every request string is formatted once in init(); request() only picks one, so the Lua cost per
-- request is the same with PERCENT 0 (the baseline row) and PERCENT 5.

local far, near, nnear, pct, acc, k

function init(args)
   local far_token, mix_file = args[1], args[2]
   pct = tonumber(args[3] or "0")
   if not far_token or not pct or pct < 0 or pct > 100 then
      error("refresh_mix.lua: usage: wrk ... -s refresh_mix.lua URL -- FAR_TOKEN MIX_FILE PERCENT")
   end
   far = wrk.format(nil, nil, { ["Authorization"] = "Bearer " .. far_token })
   near, nnear = {}, 0
   if pct > 0 then
      for line in io.lines(mix_file) do
         local access, refresh = string.match(line, "^(%S+)%s+(%S+)$")
         if access then
            nnear = nnear + 1
            near[nnear] = wrk.format(nil, nil, {
               ["Authorization"] = "Bearer " .. access,
               ["Cookie"] = "refresh_token=" .. refresh,
            })
         end
      end
      if nnear == 0 then
         error("refresh_mix.lua: no 'ACCESS REFRESH' line in " .. mix_file)
      end
   end
   acc, k = 0, 0
   io.write(string.format("refresh_mix: %d%% of requests carry one of %d near-expiry pairs\n", pct, nnear))
end

function request()
   acc = acc + pct
   if acc >= 100 then
      acc = acc - 100
      k = k % nnear + 1
      return near[k]
   end
   return far
end
