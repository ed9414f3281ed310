"""The Lua scripts that make multi-key changes atomic.

Every key a script touches arrives in ``KEYS`` and belongs to one queue's hash tag
(or is the script's only key), so each script runs in one Redis Cluster slot.
"""

# A script stops at the first command Redis refuses, keeping what it wrote before: one
# that takes a job out of one key and then puts it in another must first check that
# the other is of the right type (a key overwritten by hand, say), or the job is lost.
# Scripts that begin with this check with `wrong(key, type)`, which gives the error to
# return (before anything is written) unless the key is of that type or absent.
_EXPECT = """
local function wrong(key, kind)
  local t = redis.call('TYPE', key).ok
  if t ~= kind and t ~= 'none' then
    return 'WRONGTYPE ' .. key .. ' holds a ' .. t .. ', not a ' .. kind ..
           ': nothing was changed'
  end
end
"""

# `count(hash, field, n)`: HINCRBY, but a count overwritten by hand with something
# that is not a whole number (or a hash with something else) starts again from `n`
# instead of failing: the script
# would stop there, after writes it had made (a job out of a list, say), and every
# later write that counts (every job's outcome) would fail the same way.
_COUNT = """
local function count(hash, field, n)
  local ok, total = pcall(redis.call, 'HINCRBY', hash, field, n)
  if ok then return total end
  -- Refused out of memory, the key is absent or a hash: the HSET raises that, as the
  -- script's first write (once it has written, Redis lets it write on).
  local t = redis.call('TYPE', hash).ok
  if t ~= 'hash' and t ~= 'none' then redis.call('DEL', hash) end
  redis.call('HSET', hash, field, n)
  return tonumber(n)
end
"""

# `hset(key, ...)`: HSET, but a key overwritten by hand with something that is not a
# hash (a job's record, say) is written anew instead of failing: the script would stop
# there, and every batch of outcomes holding that job's would fail again, the jobs of
# the batch run again and again. Any other refusal (out of memory) is raised.
_HSET = """
local function hset(key, ...)
  local written = redis.pcall('HSET', key, ...)
  if type(written) == 'table' and written.err then
    if string.sub(written.err, 1, 9) ~= 'WRONGTYPE' then error(written) end
    redis.call('DEL', key)
    return redis.call('HSET', key, ...)
  end
  return written
end
"""

# KEYS: a hash. ARGV: fields and values. HSET as _HSET does it.
HSET_ANEW = _HSET + "return hset(KEYS[1], unpack(ARGV))\n"

# KEYS: a hash. ARGV: a field, how much to add. HINCRBY as _COUNT does it.
COUNT = _COUNT + "return count(KEYS[1], ARGV[1], ARGV[2])\n"

# `trim(dead, dead data, stats, before)`: deletes the dead letters that died before
# `before`, counts them in the stats' `dead_trimmed`, and returns how many (needs
# _COUNT).
_TRIM = """
local function trim(dead, data, stats, before)
  local old = redis.call('ZRANGEBYSCORE', dead, '-inf', '(' .. before)
  for _, id in ipairs(old) do redis.call('HDEL', data, id) end
  if #old > 0 then
    redis.call('ZREMRANGEBYSCORE', dead, '-inf', '(' .. before)
    count(stats, 'dead_trimmed', #old)
  end
  return #old
end
"""

# KEYS: queue, active, fetched. ARGV: how many, the fetcher's name, the fetch's number,
# how long to keep the note (ms), 1 if the fetch is sent again. Moves up to that many
# jobs, oldest first, and notes in `fetched` the fetcher, the fetch's number and how
# many it moved (if any, or if sent again). Sent again (its reply was lost) it moves
# nothing: it returns the jobs it moved, still at the head of the active list, where
# nothing but a fetch pushes; and a fetch older than the note (held up on a dead
# connection, arriving after its retry) moves nothing.
FETCH_MANY = (
    _EXPECT
    + """
local note = redis.call('GET', KEYS[3])
if note then
  local who, number, count = string.match(note, '^(%S+) (%d+) (%d+)$')
  if who == ARGV[2] then
    number = tonumber(number)
    local mine = tonumber(ARGV[3])
    if number > mine then return {} end
    if number == mine then
      if count == '0' then return {} end
      local back = redis.call('LRANGE', KEYS[2], 0, tonumber(count) - 1)
      local out = {}
      for i = #back, 1, -1 do out[#out + 1] = back[i] end
      return out
    end
  end
end
local want = tonumber(ARGV[1])
local out = {}
if want >= 1 then
  local bad = wrong(KEYS[2], 'list')
  if bad then return redis.error_reply(bad) end
  -- The oldest `want` as one LMOVE each would leave them, in three calls (an LMOVE a
  -- job was a third of Redis's time for a noop job): read newest first, made oldest
  -- first, pushed so that the oldest goes in first and the newest ends at the head.
  local got = redis.call('LRANGE', KEYS[1], -want, -1)
  local n = #got
  for i = 1, n do out[i] = got[n + 1 - i] end
  if n > 0 then
    redis.call('LTRIM', KEYS[1], 0, -n - 1)
    for i = 1, n, 1000 do redis.call('LPUSH', KEYS[2], unpack(out, i, math.min(i + 999, n))) end
  end
end
if #out > 0 or ARGV[5] == '1' then
  redis.call('SET', KEYS[3], ARGV[2] .. ' ' .. ARGV[3] .. ' ' .. #out, 'PX', ARGV[4])
end
return out
"""
)

# KEYS: active, queue, fetched. Puts every job of the active list back at the end of
# the queue that workers take from, the oldest job frontmost, and forgets the note of
# the worker's last fetch.
PUT_BACK = """
redis.call('DEL', KEYS[3])
local n = 0
while redis.call('LMOVE', KEYS[1], KEYS[2], 'LEFT', 'RIGHT') do n = n + 1 end
return n
"""

# KEYS: active, queue. ARGV: jobs taken ahead that a worker gives back, newest first.
# Puts each that is still in the active list back at the end of the queue that
# workers take from, so the oldest is taken first again; returns how many. Each is
# looked for from the tail: of two identical jobs, the one at the head may be a lost
# fetch's (see FETCH_MANY), never the worker's own.
GIVE_BACK = (
    _EXPECT
    + """
local bad = wrong(KEYS[2], 'list')
if bad then return redis.error_reply(bad) end
local n = 0
for i = 1, #ARGV do
  if redis.call('LREM', KEYS[1], -1, ARGV[i]) == 1 then
    redis.call('RPUSH', KEYS[2], ARGV[i])
    n = n + 1
  end
end
return n
"""
)

# KEYS: active. ARGV: a job pushed without an id, the job with the id a worker gave
# it. Puts the new form in the old one's place (the oldest identical copy: from the
# tail, as in GIVE_BACK); returns its index, or nil if the job is no longer there.
GIVE_ID = """
local i = redis.call('LPOS', KEYS[1], ARGV[1], 'RANK', -1)
if i then redis.call('LSET', KEYS[1], i, ARGV[2]) end
return i
"""

# KEYS: active, dead, dead data, stats, stalls. ARGV: raw job, dead-letter id, entry
# JSON, now, trim entries that died before this time. Adds the dead letter and takes
# the job out of the active list in one step; returns how many old entries were trimmed.
# (Jobs that end leave the active list by LREM from its tail, where the oldest are.)
BURY = (
    _EXPECT
    + _COUNT
    + _TRIM
    + """
local bad = wrong(KEYS[2], 'zset') or wrong(KEYS[4], 'hash') or wrong(KEYS[5], 'hash')
if bad then return redis.error_reply(bad) end
redis.call('HSET', KEYS[3], ARGV[2], ARGV[3])
redis.call('ZADD', KEYS[2], ARGV[4], ARGV[2])
redis.call('HDEL', KEYS[5], ARGV[2])
local trimmed = trim(KEYS[2], KEYS[3], KEYS[4], ARGV[5])
count(KEYS[4], 'dead', 1)
redis.call('LREM', KEYS[1], -1, ARGV[1])
return trimmed
"""
)

# KEYS: dead, dead data, stats. ARGV: trim entries that died before this time.
# Trims the dead letters past their retention; returns how many. (A worker's
# heartbeat runs it now and then: BURY trims too, but only when another job dies.)
TRIM_DEAD = (
    _COUNT
    + _TRIM
    + """
return trim(KEYS[1], KEYS[2], KEYS[3], ARGV[1])
"""
)

# KEYS: active, delayed. ARGV: raw job, due time, the job as it runs next (one
# attempt along). A retry waits out its backoff in the delayed set.
RETRY_LATER = (
    _EXPECT
    + """
local bad = wrong(KEYS[2], 'zset')
if bad then return redis.error_reply(bad) end
local due = tonumber(ARGV[2])  -- ZADD would refuse it after the LREM
if not due or due ~= due or due == math.huge or due == -math.huge then
  return redis.error_reply('ERR a retry is due at a finite time, not ' .. ARGV[2])
end
if redis.call('LREM', KEYS[1], -1, ARGV[1]) == 1 then
  redis.call('ZADD', KEYS[2], ARGV[2], ARGV[3])
end
return 1
"""
)

# KEYS: delayed, queue. ARGV: now, at most this many. Moves due jobs to the queue
# (each exactly once, however many workers run this) and returns
# {moved, time the next delayed job is due or false}.
PROMOTE = (
    _EXPECT
    + """
local bad = wrong(KEYS[2], 'list')
if bad then return redis.error_reply(bad) end
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, ARGV[2])
for _, raw in ipairs(due) do
  redis.call('ZREM', KEYS[1], raw)
  redis.call('LPUSH', KEYS[2], raw)
end
local nxt = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
return {#due, nxt[2] or false}
"""
)

# KEYS: active of a dead worker W, queue, workers, stalls, dead, dead data, stats.
# ARGV: raw job, job id, max stalls, W, W is dead if its heartbeat is older than this,
# dead-letter entry JSON, now, the job as it runs next (one attempt along). Recovers
# one job of a dead worker: back to the front of the queue, or to the dead letters
# once it has stalled more than max stalls.
# Returns -1 if W came back to life, 0 if another worker recovered the job first,
# 1 if requeued, 2 if dead-lettered.
RECOVER_ONE = (
    _EXPECT
    + _COUNT
    + """
local bad = wrong(KEYS[2], 'list')
  or wrong(KEYS[4], 'hash')
  or wrong(KEYS[5], 'zset')
  or wrong(KEYS[6], 'hash')
  or wrong(KEYS[7], 'hash')
if bad then return redis.error_reply(bad) end
local beat = redis.call('ZSCORE', KEYS[3], ARGV[4])
if beat and tonumber(beat) > tonumber(ARGV[5]) then return -1 end
if redis.call('LREM', KEYS[1], 1, ARGV[1]) == 0 then return 0 end
local n = count(KEYS[4], ARGV[2], 1)
count(KEYS[7], 'stalled', 1)
if n > tonumber(ARGV[3]) then
  redis.call('HDEL', KEYS[4], ARGV[2])
  redis.call('HSET', KEYS[6], ARGV[2], ARGV[6])
  redis.call('ZADD', KEYS[5], ARGV[7], ARGV[2])
  count(KEYS[7], 'dead', 1)
  return 2
end
redis.call('RPUSH', KEYS[2], ARGV[8])
return 1
"""
)

# KEYS: a job's record. ARGV: how many stalls to add to it, the worker W whose job it
# was, then field, value pairs. Adds the stalls and sets the fields unless another
# worker ended the job (done, failed or aborted): one put back on its queue, by W
# stopping or by recovery of W, may have been run to its end by another worker before
# this note of it. (Ended by W itself, it is back on its queue all the same: the end's
# record was stored, taking it out of W's list was refused.)
NOTE_UNLESS_ENDED = (
    _COUNT
    + _HSET
    + """
if ARGV[1] ~= '0' then count(KEYS[1], 'stalls', ARGV[1]) end
local status = redis.pcall('HGET', KEYS[1], 'status')  -- not a hash: written anew
if (status == 'done' or status == 'failed' or status == 'aborted')
    and redis.call('HGET', KEYS[1], 'worker') ~= ARGV[2] then
  return 0
end
hset(KEYS[1], unpack(ARGV, 3))
return 1
"""
)

# KEYS: active of W, workers, fetched of W. ARGV: W, dead-before. Forgets a dead
# worker whose active list is empty, and the note of its last fetch.
FORGET_WORKER = """
local beat = redis.call('ZSCORE', KEYS[2], ARGV[1])
if beat and tonumber(beat) > tonumber(ARGV[2]) then return 0 end
if redis.call('LLEN', KEYS[1]) > 0 then return 0 end
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('DEL', KEYS[3])
return 1
"""

# KEYS: dead, dead data, queue, aborts, then the job's unique key if it has one, then
# its record if the script is to write it. ARGV: dead-letter id, raw job, job id, 1 if
# there is a unique key (else 0), then the record's fields and values (none: the
# caller wrote it; a Redis Cluster cannot reach the record from the queue's slot).
# Requeues a dead letter once, however many callers race, taking its unique key
# again: returns 1, 0 if it is gone (retried or purged), or the id of another job
# that holds the key (then nothing changes). The record is written anew before the
# job is queued (no worker can end the job first), and an abort asked for while the
# job last ran, never carried out, is forgotten: it is not this new run's.
REVIVE = (
    _EXPECT
    + """
local bad = wrong(KEYS[3], 'list')
if bad then return redis.error_reply(bad) end
if redis.call('HEXISTS', KEYS[2], ARGV[1]) == 0 then return 0 end
if ARGV[4] == '1' then
  local holder = redis.call('GET', KEYS[5])
  if holder and holder ~= ARGV[3] then return holder end
  redis.call('SET', KEYS[5], ARGV[3])
end
if #ARGV > 4 then
  local record = KEYS[#KEYS]
  redis.call('DEL', record)
  redis.call('HSET', record, unpack(ARGV, 5))
end
redis.call('HDEL', KEYS[4], ARGV[3])
redis.call('HDEL', KEYS[2], ARGV[1])
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('LPUSH', KEYS[3], ARGV[2])
return 1
"""
)

# KEYS: the keys the commands touch, then the records of the jobs done, in their
# rows' order. ARGV: how many entries of ARGV the commands take; the commands one
# after another, each as its name, the index of its key in KEYS, how many arguments
# follow, the arguments; then the index in KEYS of the first job's record; then the
# rows of jobs done (see taskq.writes.Writes.done) in runs of rows that share their
# active list, result TTL, number of start values (0, 3 or 8: the last that many of
# taskq.writes.START_FIELDS) and worker. A run is the index of its active list in
# KEYS, the TTL, the number of start values, the worker ("" with none), how many rows
# follow; then each row: the raw job, the result, the finish time, the start values
# but the worker. A row's two times, the finish time and started_at (the last start
# value), are text (taskq.writes.stamp).
# Runs a write of several simple commands (HSET, EXPIRE, LREM, HINCRBY, ...) in one
# call: one reply to read, and nothing written if Redis refuses the first command
# (out of memory, say: a script stops at its first refused command).
# A row carries only what is its own (five values for a job pushed by taskq, eleven
# before runs): packing the arguments was a third of a batch's CPU on the worker.
# Rows with 3 or 0 start values are written without building a table of fields:
# ~10 % of Redis's time for a row.
APPLY = (
    _COUNT
    + _HSET
    + """
local i, n, last = 2, 0, 1 + tonumber(ARGV[1])
while i <= last do
  local argc = tonumber(ARGV[i + 2])
  if ARGV[i] == 'HINCRBY' then
    count(KEYS[tonumber(ARGV[i + 1])], ARGV[i + 3], ARGV[i + 4])
  elseif ARGV[i] == 'HSET' then
    hset(KEYS[tonumber(ARGV[i + 1])], unpack(ARGV, i + 3, i + 2 + argc))
  else
    redis.call(ARGV[i], KEYS[tonumber(ARGV[i + 1])], unpack(ARGV, i + 3, i + 2 + argc))
  end
  i = i + 3 + argc
  n = n + 1
end
local names = {'task', 'queue', 'args', 'kwargs', 'enqueued_at', 'attempts'}
local call = redis.call
local k = tonumber(ARGV[i])
i = i + 1
while i <= #ARGV do
  local active, ttl, starts = KEYS[tonumber(ARGV[i])], ARGV[i + 1], tonumber(ARGV[i + 2])
  local worker, rows = ARGV[i + 3], tonumber(ARGV[i + 4])
  local width = starts > 0 and 2 + starts or 3
  -- Jobs end about in the order they were taken, so a run's jobs are most often
  -- the last `rows` of their active list: then one LTRIM takes them all out, not an
  -- LREM each (a third of a row's time). Else each is taken out as an LREM from
  -- the tail (the oldest of identical copies: see GIVE_BACK).
  local tail, left, out = redis.call('LRANGE', active, -rows, -1), {}, true
  for r = 0, rows - 1 do
    local raw = ARGV[i + 5 + r * width]
    left[raw] = (left[raw] or 0) + 1
  end
  for _, raw in ipairs(tail) do
    local count = left[raw]
    if not count or count == 0 then out = false break end
    left[raw] = count - 1
  end
  out = out and #tail == rows
  i = i + 5
  for _ = 1, rows do
    local key, raw, result, finished = KEYS[k], ARGV[i], ARGV[i + 1], ARGV[i + 2]
    if starts == 3 then  -- the bulk: a quick job pushed by taskq
      hset(key, 'status', 'done', 'result', result, 'finished_at', finished,
           'attempts', ARGV[i + 3], 'worker', worker, 'started_at', ARGV[i + 4])
    elseif starts == 0 then  -- its start was stored on its own
      hset(key, 'status', 'done', 'result', result, 'finished_at', finished)
    else
      local fields = {'status', 'done', 'result', result, 'finished_at', finished}
      for j = 1, starts - 2 do
        fields[#fields + 1] = names[8 - starts + j]
        fields[#fields + 1] = ARGV[i + 2 + j]
      end
      fields[#fields + 1] = 'worker'
      fields[#fields + 1] = worker
      fields[#fields + 1] = 'started_at'
      fields[#fields + 1] = ARGV[i + width - 1]
      hset(key, unpack(fields))
    end
    call('EXPIRE', key, ttl)
    if not out then call('LREM', active, -1, raw) end
    i = i + width
    k = k + 1
    n = n + 3
  end
  if out then call('LTRIM', active, 0, -rows - 1) end
end
return n
"""
)

# KEYS: queue, the push's mark. ARGV: seconds the mark lasts, raw jobs. How a push
# queues its jobs on a Redis Cluster, whose client sends a command again when its
# reply is lost: the mark, in the queue's slot, makes the second run queue nothing.
# (A delayed push needs none: a ZADD sent twice adds its jobs once.) Returns how many
# jobs it queued (0: sent again). Lua's unpack takes up to ~8,000 values: pushes come
# in slices of PUSH_BATCH (2,000) jobs.
PUSH_ONCE = (
    _EXPECT
    + """
local bad = wrong(KEYS[1], 'list')
if bad then return redis.error_reply(bad) end
if not redis.call('SET', KEYS[2], '1', 'NX', 'EX', ARGV[1]) then return 0 end
redis.call('LPUSH', KEYS[1], unpack(ARGV, 2))
return #ARGV - 1
"""
)

# KEYS: unique key, queue (or delayed set). ARGV: job id, raw job, due time or "".
# Pushes the job unless another job holds the key; returns the id of the job that
# holds it now (this one if it was pushed). Two producers racing make one job.
PUSH_UNIQUE = (
    _EXPECT
    + """
local holder = redis.call('GET', KEYS[1])
if holder then return holder end
local bad = wrong(KEYS[2], ARGV[3] == '' and 'list' or 'zset')
if bad then return redis.error_reply(bad) end
redis.call('SET', KEYS[1], ARGV[1])
if ARGV[3] == '' then
  redis.call('LPUSH', KEYS[2], ARGV[2])
else
  redis.call('ZADD', KEYS[2], ARGV[3], ARGV[2])
end
return ARGV[1]
"""
)

# KEYS: the set of queue names. ARGV: queue names. Adds them to the set, unless its
# key holds something else (written by hand): the set only lists queues, and a push
# must not fail over it. Returns -1 then, else what SADD returns. (A heartbeat sends
# a plain SADD and lets its refusal by: a cluster's pipelines refuse scripts.)
REGISTER = """
local kind = redis.call('TYPE', KEYS[1]).ok
if kind ~= 'set' and kind ~= 'none' then return -1 end
return redis.call('SADD', KEYS[1], unpack(ARGV))
"""

# KEYS: unique key. ARGV: job id. Releases the key if this job holds it.
RELEASE_KEY = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

# KEYS: queue, delayed, aborts. ARGV: job id, now, the id as JSON writes it inside
# quotes, and with every non-ASCII character escaped. Removes a waiting job (queued
# or delayed) and returns 1; otherwise records the abort for the worker that has the
# job and returns 0. Scans the queue: an admin operation, linear in the queue's
# length. A payload is the job only if its own id is the id (not an argument's).
ABORT = """
local function is_the_job(raw)
  if not (string.find(raw, ARGV[3], 1, true) or string.find(raw, ARGV[4], 1, true)) then
    return false
  end
  local ok, job = pcall(cjson.decode, raw)
  return ok and type(job) == 'table' and job.id == ARGV[1]
end
for _, raw in ipairs(redis.call('LRANGE', KEYS[1], 0, -1)) do
  if is_the_job(raw) then
    redis.call('LREM', KEYS[1], 1, raw)
    return 1
  end
end
for _, raw in ipairs(redis.call('ZRANGE', KEYS[2], 0, -1)) do
  if is_the_job(raw) then
    redis.call('ZREM', KEYS[2], raw)
    return 1
  end
end
redis.call('HSET', KEYS[3], ARGV[1], ARGV[2])
return 0
"""
