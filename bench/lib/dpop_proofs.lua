-- bench/dpop.sh and bench/instructions.sh: every request carries a new DPoP proof from a
-- file made for this run alone (one per line, `jwtgate dpop-proof --count N`). Thread k of
-- n sends lines k, k+n, k+2n, ... so no two requests share a proof. When its share runs
-- out a thread starts it over: those replays are refused with 401 and counted by wrk as
-- non-2xx, which the caller reports (give each run a file of its own, long enough).
local threads = {}

function setup(thread)
    thread:set("id", #threads)
    table.insert(threads, thread)
end

function init(args)
    nthreads = #args > 0 and tonumber(args[1]) or 1
    token = os.getenv("DPOP_TOKEN")
    proofs = {}
    local i = 0
    for line in io.lines(os.getenv("DPOP_PROOFS")) do
        if i % nthreads == id then
            proofs[#proofs + 1] = line
        end
        i = i + 1
    end
    next_proof = 1
end

function request()
    local p = proofs[next_proof]
    next_proof = next_proof + 1
    if next_proof > #proofs then next_proof = 1 end
    return wrk.format("GET", nil, { ["Authorization"] = "DPoP " .. token, ["DPoP"] = p })
end
