-- torchls in a real Neovim (0.10+), headless:
--   nvim --headless --clean -l tests/editors/hover_and_fix.lua
-- Environment: TORCHLS_WORKSPACE (a copy of examples/ with its checkpoints), TORCHLS_SERVER_CMD
-- (the server's command as a JSON list), TORCHLS_RESULT (where to write the JSON result).
-- Starts `torchls serve` with vim.lsp.start, hovers `SmallConvNet` in model.py until the hover
-- shows the parameter count, opens train.py, waits for torchls's diagnostics, asks for the quick
-- fixes of the DataParallel load, applies "Strip the `module.` prefix" with
-- vim.lsp.util.apply_workspace_edit, saves, and waits for the diagnostic to go away.
-- With TORCHLS_SHAPE_FILE (a file of the workspace whose forward fails on a shape) it then opens
-- that file, waits for the shape diagnostic, applies its quick fix, saves, waits for the error to
-- go, and reads the file's inlay hints.

local workspace = assert(os.getenv("TORCHLS_WORKSPACE"), "TORCHLS_WORKSPACE is not set")
local server_cmd = vim.json.decode((assert(os.getenv("TORCHLS_SERVER_CMD"), "no TORCHLS_SERVER_CMD")))
local result_path = assert(os.getenv("TORCHLS_RESULT"), "TORCHLS_RESULT is not set")
local HOVER_SECONDS = tonumber(os.getenv("TORCHLS_HOVER_SECONDS") or "") or 90
local DIAGNOSTIC_SECONDS = tonumber(os.getenv("TORCHLS_DIAGNOSTIC_SECONDS") or "") or 90

local started = vim.uv.hrtime()
local function elapsed()
  return (vim.uv.hrtime() - started) / 1e9
end

-- Client methods are called with `:` from 0.11 on, with `.` before.
local function method(client, name, ...)
  if vim.fn.has("nvim-0.11") == 1 then
    return client[name](client, ...)
  end
  return client[name](...)
end

local result = { nvim = tostring(vim.version()), timings = {}, statuses = {}, hover_attempts = 0 }
local client_id

local function finish(err)
  result.error = err
  result.timings.total = elapsed()
  if client_id then
    local client = vim.lsp.get_client_by_id(client_id)
    if client then
      method(client, "stop")
      vim.wait(10000, function()
        return method(client, "is_stopped")
      end, 50)
      result.server_stopped = method(client, "is_stopped")
    end
  end
  local file = assert(io.open(result_path, "w"))
  file:write(vim.json.encode(result))
  file:close()
  io.stdout:write(vim.json.encode(result), "\n")
  os.exit(err and 1 or 0)
end

local function fail(message)
  finish(message)
end

-- 0-based line and column of the first `needle` in `buf`.
local function find(buf, needle)
  for index, line in ipairs(vim.api.nvim_buf_get_lines(buf, 0, -1, false)) do
    local col = line:find(needle, 1, true)
    if col then
      return index - 1, col - 1
    end
  end
  fail("not found in the buffer: " .. needle)
end

local function open(name)
  vim.cmd.edit(vim.fn.fnameescape(workspace .. "/" .. name))
  local buf = vim.api.nvim_get_current_buf()
  vim.bo[buf].filetype = "python" -- `-l` scripts run without filetype detection
  return buf
end

local function hover_text(contents)
  if type(contents) == "string" then
    return contents
  end
  if contents.value then
    return contents.value
  end
  local parts = {}
  for _, item in ipairs(contents) do
    table.insert(parts, type(item) == "string" and item or item.value)
  end
  return table.concat(parts, "\n")
end

local function torchls_diagnostics(buf)
  local found = {}
  for _, d in ipairs(vim.diagnostic.get(buf)) do
    if d.source == "torchls" then
      table.insert(found, d)
    end
  end
  return found
end

-- model.py: start the server, hover the class until the count is there -----------------------
local model = open("model.py")
client_id = vim.lsp.start({
  name = "torchls",
  cmd = server_cmd,
  root_dir = workspace,
  init_options = { worker = { timeoutSeconds = 60 } },
  handlers = {
    ["torchls/status"] = function(_, params)
      table.insert(result.statuses, { at = elapsed(), state = params.state, torch = params.torch })
    end,
  },
}, { bufnr = model })
if not client_id then
  fail("vim.lsp.start did not start torchls")
end
vim.wait(30000, function()
  local client = vim.lsp.get_client_by_id(client_id)
  return client == nil or client.initialized == true -- nil: the server exited
end, 50)
local starting = vim.lsp.get_client_by_id(client_id)
if not (starting and starting.initialized) then
  client_id = nil
  fail(starting and "torchls did not finish initializing within 30 s" or "torchls exited")
end
result.timings.initialized = elapsed()

local line, col = find(model, "class SmallConvNet")
col = col + #"class "
local hover_params = {
  textDocument = { uri = vim.uri_from_bufnr(model) },
  position = { line = line, character = col + 2 },
}
local deadline = elapsed() + HOVER_SECONDS
while true do
  result.hover_attempts = result.hover_attempts + 1
  local responses, err = vim.lsp.buf_request_sync(model, "textDocument/hover", hover_params, 60000)
  local response = responses and responses[client_id]
  if response and response.result and response.result.contents then
    result.hover = hover_text(response.result.contents)
    if result.hover:find("20,234", 1, true) then
      break
    end
  elseif err or (response and response.err) then
    result.hover_error = tostring(err or vim.inspect(response.err))
  end
  if elapsed() > deadline then
    fail("no hover with the parameter count within " .. HOVER_SECONDS .. " s")
  end
  vim.wait(1000)
end
result.timings.hover = elapsed()

-- train.py: diagnostics, the quick fix, the edit ----------------------------------------------
local train = open("train.py")
if not vim.lsp.buf_attach_client(train, client_id) then
  fail("could not attach torchls to train.py")
end
local load_line = find(train, 'torch.load("checkpoints/dataparallel.pt")')
local function diagnostic_at_load()
  for _, d in ipairs(torchls_diagnostics(train)) do
    if d.lnum == load_line then
      return d
    end
  end
end
if not vim.wait(DIAGNOSTIC_SECONDS * 1000, diagnostic_at_load, 100) then
  fail("no torchls diagnostic on the DataParallel load within " .. DIAGNOSTIC_SECONDS .. " s")
end
result.timings.diagnostics = elapsed()
local diagnostic = diagnostic_at_load()
result.diagnostic = diagnostic.message
result.diagnostic_count = #torchls_diagnostics(train)
local lsp_diagnostic = diagnostic.user_data and diagnostic.user_data.lsp

local responses, err = vim.lsp.buf_request_sync(train, "textDocument/codeAction", {
  textDocument = { uri = vim.uri_from_bufnr(train) },
  range = lsp_diagnostic and lsp_diagnostic.range or {
    start = { line = diagnostic.lnum, character = diagnostic.col },
    ["end"] = { line = diagnostic.end_lnum, character = diagnostic.end_col },
  },
  context = { diagnostics = { lsp_diagnostic }, only = { "quickfix" }, triggerKind = 1 },
}, 30000)
local response = responses and responses[client_id]
if not response or response.err or not response.result then
  fail("textDocument/codeAction failed: " .. vim.inspect(err or (response and response.err)))
end
result.actions = {}
local chosen
for _, action in ipairs(response.result) do
  table.insert(result.actions, action.title)
  if not chosen and action.title:find("Strip the `module.` prefix", 1, true) then
    chosen = action
  end
end
if not chosen then
  fail("no action strips the `module.` prefix")
end
local client = assert(vim.lsp.get_client_by_id(client_id))
if not chosen.edit and client.server_capabilities.codeActionProvider.resolveProvider then
  local resolved = method(client, "request_sync", "codeAction/resolve", chosen, 30000, train)
  chosen = resolved and resolved.result or chosen
end
if not chosen.edit then
  fail("the chosen action has no edit: " .. vim.inspect(chosen))
end
result.chosen = chosen.title
local before = vim.api.nvim_buf_get_lines(train, 0, -1, false)
vim.lsp.util.apply_workspace_edit(chosen.edit, client.offset_encoding)
local after = vim.api.nvim_buf_get_lines(train, 0, -1, false)
result.edited_line = after[load_line + 1]
result.changed_lines = {}
for index, text in ipairs(after) do
  if before[index] ~= text then
    table.insert(result.changed_lines, text)
  end
end
result.line_count_change = #after - #before
vim.api.nvim_buf_call(train, function()
  vim.cmd("silent write")
end)
result.timings.fix_applied = elapsed()

-- The server checks the edited text again: the error on that line goes away.
result.diagnostic_cleared = vim.wait(DIAGNOSTIC_SECONDS * 1000, function()
  return diagnostic_at_load() == nil
end, 100)
result.diagnostics_after = {}
for _, d in ipairs(torchls_diagnostics(train)) do
  table.insert(result.diagnostics_after, { line = d.lnum, message = d.message })
end
result.timings.diagnostic_cleared = elapsed()

-- the shape error: diagnostic, verified fix, inlay hints of the fixed forward ------------------
local shape_file = os.getenv("TORCHLS_SHAPE_FILE")
if shape_file then
  local shapes = open(shape_file)
  if not vim.lsp.buf_attach_client(shapes, client_id) then
    fail("could not attach torchls to " .. shape_file)
  end
  local function shape_diagnostic()
    for _, d in ipairs(torchls_diagnostics(shapes)) do
      if d.code == "shape-mismatch" then
        return d
      end
    end
  end
  if not vim.wait(DIAGNOSTIC_SECONDS * 1000, shape_diagnostic, 100) then
    fail("no shape-mismatch diagnostic within " .. DIAGNOSTIC_SECONDS .. " s")
  end
  local found = shape_diagnostic()
  result.shape_diagnostic = { line = found.lnum, message = found.message }
  local uri = vim.uri_from_bufnr(shapes)
  -- The fix is offered once the server has profiled the edited text: ask until it is there.
  local fix
  local asked_until = elapsed() + DIAGNOSTIC_SECONDS
  while not fix and elapsed() < asked_until do
    local answers = vim.lsp.buf_request_sync(shapes, "textDocument/codeAction", {
      textDocument = { uri = uri },
      range = { start = { line = found.lnum, character = 0 }, ["end"] = { line = found.lnum, character = 0 } },
      context = { diagnostics = { found.user_data and found.user_data.lsp }, only = { "quickfix" }, triggerKind = 1 },
    }, 30000)
    local answer = answers and answers[client_id]
    for _, action in ipairs(answer and answer.result or {}) do
      if action.edit and action.title:find("in_features", 1, true) then
        fix = action
      end
    end
    if not fix then
      vim.wait(500)
    end
  end
  if not fix then
    fail("no verified shape fix offered within " .. DIAGNOSTIC_SECONDS .. " s")
  end
  result.shape_fix = fix.title
  vim.lsp.util.apply_workspace_edit(fix.edit, client.offset_encoding)
  vim.api.nvim_buf_call(shapes, function()
    vim.cmd("silent write")
  end)
  result.shape_error_cleared = vim.wait(DIAGNOSTIC_SECONDS * 1000, function()
    return shape_diagnostic() == nil
  end, 100)
  -- The saved text is profiled again: its forward's shapes come as inlay hints.
  local count = vim.api.nvim_buf_line_count(shapes)
  result.inlay_hints = {}
  vim.wait(DIAGNOSTIC_SECONDS * 1000, function()
    local answers = vim.lsp.buf_request_sync(shapes, "textDocument/inlayHint", {
      textDocument = { uri = uri },
      range = { start = { line = 0, character = 0 }, ["end"] = { line = count, character = 0 } },
    }, 30000)
    local answer = answers and answers[client_id]
    local hints = answer and answer.result or {}
    result.inlay_hints = {}
    for _, hint in ipairs(hints) do
      local label = type(hint.label) == "string" and hint.label or vim.inspect(hint.label)
      table.insert(result.inlay_hints, { line = hint.position.line, character = hint.position.character, label = label })
    end
    return #hints > 0
  end, 500)
  result.timings.shapes = elapsed()
end

finish(nil)
