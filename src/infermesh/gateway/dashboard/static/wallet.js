// infermesh dashboard: the browser's wallet (EIP-1193: the provider a wallet extension
// injects as window.ethereum). On the sign-in page: sign in with it (an EIP-4361 message,
// personal_sign). On Billing: top up by an EIP-2612 permit (eth_signTypedData_v4) that
// the gateway's relayer sends. Without a wallet the sign-in button stays hidden and the
// top-up button disabled; everything else works without this script.
"use strict";

(() => {
  const ethereum = window.ethereum;
  if (!ethereum || typeof ethereum.request !== "function") return;

  /** A failure already worded for the person at the page. */
  class Refused extends Error {}

  async function fromWallet(request) {
    try {
      return await ethereum.request(request);
    } catch (error) {
      if (error && error.code === 4001) throw new Refused("You declined in your wallet.");
      throw new Refused(`Your wallet refused: ${(error && error.message) || error}`);
    }
  }

  // The dashboard answers a failure with its error page: that page's message.
  async function failure(response) {
    try {
      const page = new DOMParser().parseFromString(await response.text(), "text/html");
      const alert = page.querySelector('[role="alert"]');
      if (alert && alert.textContent.trim()) return alert.textContent.trim();
    } catch (error) {
      // not a page: say the status
    }
    return `The gateway answered ${response.status}; reload the page and try again.`;
  }

  async function fromGateway(url, options = {}) {
    let response;
    try {
      response = await fetch(url, { credentials: "same-origin", ...options });
    } catch (error) {
      throw new Refused("The gateway could not be reached; try again.");
    }
    if (!response.ok || response.redirected) throw new Refused(await failure(response));
    return response;
  }

  function posted(fields, headers = {}) {
    return { method: "POST", headers, body: new URLSearchParams(fields) };
  }

  async function walletAccount() {
    const accounts = await fromWallet({ method: "eth_requestAccounts" });
    if (!Array.isArray(accounts) || !accounts.length) {
      throw new Refused("Your wallet gave no account; unlock it and try again.");
    }
    return accounts[0];
  }

  function utf8Hex(text) {
    const bytes = new TextEncoder().encode(text);
    return "0x" + Array.from(bytes, (byte) => byte.toString(16).padStart(2, "0")).join("");
  }

  function reporter(status, alert) {
    return {
      say(text) {
        alert.hidden = true;
        status.textContent = text;
      },
      fail(text) {
        status.textContent = "";
        alert.textContent = text;
        alert.hidden = false;
      },
    };
  }

  async function run(button, report, work) {
    button.disabled = true;
    try {
      await work();
    } catch (error) {
      report.fail(error instanceof Refused ? error.message : `That failed: ${error}`);
    } finally {
      button.disabled = false;
    }
  }

  // --- sign in --------------------------------------------------------------------------

  async function signIn(box, report) {
    report.say("Asking your wallet for its account…");
    const address = await walletAccount();
    const chainId = await fromWallet({ method: "eth_chainId" }).catch(() => "");
    const csrf = box.dataset.csrf;
    const asked = await fromGateway(
      box.dataset.messageUrl, posted({ csrf, address, chain_id: chainId }));
    const { message } = await asked.json();
    report.say("Sign the message in your wallet…");
    const signature = await fromWallet(
      { method: "personal_sign", params: [utf8Hex(message), address] });
    report.say("Signing in…");
    const answer = await fromGateway(
      box.dataset.signInUrl, posted({ csrf, message, signature, next: box.dataset.next }));
    const { next } = await answer.json();
    window.location.assign(next);
  }

  const box = document.getElementById("wallet-sign-in");
  if (box) {
    const button = document.getElementById("wallet-sign-in-button");
    const report = reporter(
      document.getElementById("wallet-sign-in-status"),
      document.getElementById("wallet-sign-in-error"));
    box.hidden = false;
    button.addEventListener("click", () => run(button, report, () => signIn(box, report)));
  }

  // --- top up by permit -----------------------------------------------------------------

  async function onChain(chainId) {
    const current = await fromWallet({ method: "eth_chainId" });
    if (Number(current) === chainId) return;
    try {
      await ethereum.request({
        method: "wallet_switchEthereumChain", params: [{ chainId: "0x" + chainId.toString(16) }],
      });
    } catch (error) {
      throw new Refused(`Switch your wallet to chain ${chainId} (the token's) and try again.`);
    }
  }

  async function topUp(form, report) {
    const amount = form.elements.amount.value.trim();
    const wallet = form.dataset.wallet;
    report.say("Asking your wallet for its account…");
    const address = await walletAccount();
    if (address.toLowerCase() !== wallet.toLowerCase()) {
      throw new Refused(`Your wallet's account is ${address}, but this account's wallet is ` +
        `${wallet}: switch accounts in your wallet.`);
    }
    const url = `${form.dataset.permitUrl}?${new URLSearchParams({ amount })}`;
    const typedData = await (await fromGateway(url)).json();
    await onChain(Number(typedData.domain.chainId));
    report.say("Sign the permit in your wallet…");
    const signature = await fromWallet(
      { method: "eth_signTypedData_v4", params: [address, JSON.stringify(typedData)] });
    report.say("Sending the permit…");
    const permit = typedData.message;
    const fields = {
      owner: permit.owner,
      spender: permit.spender,
      value: String(permit.value),
      nonce: String(permit.nonce),
      deadline: String(permit.deadline),
      signature,
    };
    const answer = await fromGateway(
      form.dataset.permitUrl, posted(fields, { "x-csrf-token": form.dataset.csrf }));
    document.dispatchEvent(new CustomEvent("infermesh:billing", { detail: await answer.text() }));
    report.say(`The relayer sent your ${amount} USDC to the treasury; it is credited once ` +
      "the transfer has its confirmations.");
  }

  const form = document.getElementById("permit-topup");
  if (form) {
    const button = form.querySelector('button[type="submit"]');
    const report = reporter(
      document.getElementById("permit-status"), document.getElementById("permit-error"));
    document.getElementById("permit-needs-wallet").hidden = true;
    button.disabled = false;
    form.addEventListener("submit", (event) => {
      event.preventDefault();
      run(button, report, () => topUp(form, report));
    });
  }
})();
