;;; eglot_hover_and_fix.el --- torchls in a real Emacs with eglot, in batch  -*- lexical-binding: t -*-

;; emacs --batch -Q -l tests/editors/eglot_hover_and_fix.el
;;
;; Environment: TORCHLS_WORKSPACE (a copy of examples/ with its checkpoints), TORCHLS_SERVER_CMD
;; (the server's command as a JSON list), TORCHLS_RESULT (where to write the JSON result).
;; Starts `torchls serve' through `eglot-server-programs', hovers `SmallConvNet' in model.py
;; until the hover shows the parameter count, opens train.py, waits for torchls's diagnostics
;; (flymake), asks `eglot-code-actions' for the quick fixes of the DataParallel load, applies
;; "Strip the `module.' prefix" with eglot's workspace-edit code, saves, and waits for the
;; diagnostic to go away.

;;; Code:

(require 'package)
;; Debian's elpa-eglot lives here; -Q skips the site's package setup.
(add-to-list 'package-directory-list "/usr/share/emacs/site-lisp/elpa")
(package-initialize)
(require 'cl-lib)
(require 'json)
(require 'python)
(require 'eglot)
(require 'flymake)

(defvar torchls-workspace (file-name-as-directory (getenv "TORCHLS_WORKSPACE")))
(defvar torchls-server-cmd (append (json-read-from-string (getenv "TORCHLS_SERVER_CMD")) nil))
(defvar torchls-result-path (getenv "TORCHLS_RESULT"))
(defvar torchls-hover-seconds (string-to-number (or (getenv "TORCHLS_HOVER_SECONDS") "90")))
(defvar torchls-diagnostic-seconds
  (string-to-number (or (getenv "TORCHLS_DIAGNOSTIC_SECONDS") "90")))
(defvar torchls-started (float-time))
(defvar torchls-result nil "The result, an alist, newest entries first.")
(defvar torchls-timings nil)
(defvar torchls-statuses nil)
(defvar torchls-server nil)

;; Nothing may prompt in batch: a prompt would read stdin and hang or fail.
(setq eglot-confirm-server-initiated-edits nil
      eglot-sync-connect 30
      eglot-connect-timeout 60
      eglot-autoshutdown nil
      make-backup-files nil
      create-lockfiles nil
      auto-save-default nil
      python-indent-guess-indent-offset nil)

;; The configuration the README documents.
(add-to-list 'eglot-server-programs
             `(python-mode . (,@torchls-server-cmd
                              :initializationOptions (:worker (:timeoutSeconds 60)))))

(cl-defmethod eglot-handle-notification
  (_server (_method (eql torchls/status)) &rest params &key state torch &allow-other-keys)
  "Record the server's `torchls/status' notifications."
  (ignore params)
  (push `((at . ,(torchls-elapsed)) (state . ,state) (torch . ,torch)) torchls-statuses))

(defun torchls-elapsed () (- (float-time) torchls-started))

(defun torchls-put (key value) (push (cons key value) torchls-result))

(defun torchls-finish (error-message)
  (torchls-put 'error error-message)
  (push (cons 'total (torchls-elapsed)) torchls-timings)
  (torchls-put 'timings torchls-timings)
  (torchls-put 'statuses (vconcat (reverse torchls-statuses)))
  (when (and torchls-server (jsonrpc-running-p torchls-server))
    (ignore-errors (eglot-shutdown torchls-server nil 10))
    (torchls-put 'server_stopped (not (jsonrpc-running-p torchls-server))))
  (let ((json (json-encode (reverse torchls-result))))
    (with-temp-file torchls-result-path (insert json))
    (princ json)
    (terpri))
  (kill-emacs (if error-message 1 0)))

(defun torchls-wait (seconds predicate)
  "Process events until PREDICATE is non-nil or SECONDS pass; return its value."
  (let ((deadline (+ (float-time) seconds)) value)
    (while (and (not (setq value (funcall predicate))) (< (float-time) deadline))
      (accept-process-output nil 0.1))
    value))

(defun torchls-open (name)
  (find-file (expand-file-name name torchls-workspace))
  (python-mode)
  (current-buffer))

(defun torchls-goto (needle)
  (goto-char (point-min))
  (unless (search-forward needle nil t)
    (error "Not found in %s: %s" (buffer-name) needle))
  (goto-char (match-beginning 0)))

(defun torchls-diagnostic-at-load ()
  "The torchls flymake diagnostic on the DataParallel load's line, if any."
  (flymake-start)  ; flymake runs on timers and commands; batch Emacs has neither
  (save-excursion
    (torchls-goto "torch.load(\"checkpoints/dataparallel.pt\")")
    (cl-find-if (lambda (diag) (string-prefix-p "torchls" (flymake-diagnostic-text diag)))
                (flymake-diagnostics (line-beginning-position) (line-end-position)))))

(defun torchls-run ()
  ;; model.py: start the server, hover the class until the count is there.
  (with-current-buffer (torchls-open "model.py")
    (apply #'eglot (eglot--guess-contact))
    (setq torchls-server
          (torchls-wait 60 (lambda () (eglot-current-server))))
    (unless torchls-server (error "eglot did not connect to torchls"))
    (push (cons 'initialized (torchls-elapsed)) torchls-timings)
    (torchls-put 'server_name (plist-get (eglot--server-info torchls-server) :name))
    (torchls-goto "class SmallConvNet")
    (forward-char (+ (length "class ") 2))
    (let ((deadline (+ (float-time) torchls-hover-seconds)) (attempts 0) hover)
      (while (not (and hover (string-search "20,234" hover)))
        (when (> (float-time) deadline)
          (torchls-put 'hover hover)
          (error "No hover with the parameter count within %s s" torchls-hover-seconds))
        (unless (= attempts 0) (accept-process-output nil 1))
        (cl-incf attempts)
        ;; A hover that times out while the worker starts is asked again.
        (condition-case failure
            (let ((response (jsonrpc-request torchls-server :textDocument/hover
                                             (eglot--TextDocumentPositionParams)
                                             :timeout 60)))
              (when response
                (setq hover (eglot--hover-info (plist-get response :contents)))))
          (jsonrpc-error (torchls-put 'hover_error (format "%S" failure)))))
      (torchls-put 'hover hover)
      (torchls-put 'hover_attempts attempts))
    (push (cons 'hover (torchls-elapsed)) torchls-timings))

  ;; train.py: diagnostics, the quick fix, the edit.
  (with-current-buffer (torchls-open "train.py")
    ;; A second file of the same project and mode is managed by the running server.
    (eglot--maybe-activate-editing-mode)
    (unless (eq (eglot-current-server) torchls-server)
      (error "train.py is not managed by the torchls server"))
    (let ((diagnostic (torchls-wait torchls-diagnostic-seconds #'torchls-diagnostic-at-load)))
      (unless diagnostic
        (error "No torchls diagnostic on the DataParallel load within %s s"
               torchls-diagnostic-seconds))
      (push (cons 'diagnostics (torchls-elapsed)) torchls-timings)
      (torchls-put 'diagnostic (flymake-diagnostic-text diagnostic))
      (let* ((beg (flymake-diagnostic-beg diagnostic))
             (end (flymake-diagnostic-end diagnostic))
             (load-line (line-number-at-pos beg))
             (before (buffer-string))
             (actions (eglot-code-actions beg end "quickfix"))
             (chosen (cl-find-if (lambda (action)
                                   (string-search "Strip the `module.` prefix"
                                                  (plist-get action :title)))
                                 actions)))
        (torchls-put 'actions (vconcat (mapcar (lambda (a) (plist-get a :title)) actions)))
        (unless chosen (error "No action strips the `module.` prefix"))
        (torchls-put 'chosen (plist-get chosen :title))
        ;; What eglot does with the action the user picks (eglot--read-execute-code-action).
        (let ((edit (plist-get chosen :edit)) (command (plist-get chosen :command)))
          (unless (or edit command) (error "The chosen action has no edit"))
          (when edit (eglot--apply-workspace-edit edit))
          (when command
            (eglot-execute-command torchls-server (intern (plist-get command :command))
                                   (plist-get command :arguments))))
        (save-excursion
          (goto-char (point-min))
          (forward-line (1- load-line))
          (torchls-put 'edited_line
                       (buffer-substring-no-properties (line-beginning-position)
                                                       (line-end-position))))
        (torchls-put 'line_count_change
                     (- (count-lines (point-min) (point-max))
                        (with-temp-buffer (insert before) (count-lines (point-min) (point-max)))))
        (save-buffer)
        (push (cons 'fix_applied (torchls-elapsed)) torchls-timings)
        ;; The server checks the edited text again: the error on that line goes away.
        (torchls-put 'diagnostic_cleared
                     (if (torchls-wait torchls-diagnostic-seconds
                                       (lambda () (not (torchls-diagnostic-at-load))))
                         t :json-false))
        (torchls-put 'diagnostics_after
                     (vconcat (mapcar #'flymake-diagnostic-text (flymake-diagnostics))))
        (push (cons 'diagnostic_cleared (torchls-elapsed)) torchls-timings)))))

(torchls-put 'emacs emacs-version)
(torchls-put 'eglot (package-desc-version (cadr (assq 'eglot package-alist))))
(condition-case err
    (progn (torchls-run) (torchls-finish nil))
  (error (torchls-finish (error-message-string err))))

;;; eglot_hover_and_fix.el ends here
