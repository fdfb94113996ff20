#!/usr/bin/env bash
# Compile contracts/TestUSDC.sol with solc-js (npm package `solc`, pinned below) into
# tests/payments/TestUSDC.json: {"abi": [...], "bytecode": "0x...", "solc": "<version>"}.
# The JSON is committed, so the tests need no compiler; run this after editing the contract.
set -euo pipefail
cd "$(dirname "$0")/.."

SOLC_VERSION=0.8.30
OUTPUT=tests/payments/TestUSDC.json

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
npm install --silent --no-audit --no-fund --prefix "$work" "solc@$SOLC_VERSION" >/dev/null

SOLC_MODULE="$work/node_modules/solc" node - contracts/TestUSDC.sol "$OUTPUT" <<'EOF'
const fs = require("fs");
const path = require("path");
const solc = require(process.env.SOLC_MODULE);
const [source, output] = process.argv.slice(2);

const input = {
  language: "Solidity",
  sources: { [path.basename(source)]: { content: fs.readFileSync(source, "utf8") } },
  settings: {
    optimizer: { enabled: true, runs: 200 },
    // Cancun runs on Base, on anvil and on py-evm (eth-tester).
    evmVersion: "cancun",
    outputSelection: { "*": { TestUSDC: ["abi", "evm.bytecode.object"] } },
  },
};
const result = JSON.parse(solc.compile(JSON.stringify(input)));
const problems = result.errors || [];
for (const problem of problems) console.error(problem.formattedMessage);
if (problems.some((problem) => problem.severity === "error")) process.exit(1);

const contract = result.contracts[path.basename(source)].TestUSDC;
const artifact = {
  abi: contract.abi,
  bytecode: "0x" + contract.evm.bytecode.object,
  solc: solc.version(),
};
fs.writeFileSync(output, JSON.stringify(artifact, null, 2) + "\n");
console.log(`wrote ${output} (solc ${artifact.solc})`);
EOF
