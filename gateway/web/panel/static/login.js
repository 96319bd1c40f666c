"use strict";
(function () {
  const form = document.getElementById("login-form");
  const error = document.getElementById("login-error");
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    error.hidden = true;
    const button = form.querySelector("button[type=submit]");
    button.disabled = true;
    try {
      const response = await fetch("/login", {
        method: "POST", credentials: "same-origin",
        headers: { "Content-Type": "application/json", "X-CSRF-Token": form.dataset.csrf },
        body: JSON.stringify({ name: form.name.value, password: form.password.value, next: form.dataset.next }),
      });
      const data = await response.json();
      if (response.ok) { location.assign(data.next); return; }
      error.textContent = data.error ? data.error.message : "login failed";
      error.hidden = false;
      if (response.status === 403) setTimeout(() => location.reload(), 1500);
    } catch (err) {
      error.textContent = "the gateway did not answer: " + err.message;
      error.hidden = false;
    } finally {
      button.disabled = false;
    }
  });
})();
