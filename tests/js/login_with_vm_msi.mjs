// An unmodified app on the legacy @azure/ms-rest-nodeauth's login helper, loginWithVmMSI: prints
// the token and what the library parsed as JSON, or the error. Args: resource [clientId] [msiEndpoint].
import nodeauth from "@azure/ms-rest-nodeauth";
const [resource, clientId, msiEndpoint] = process.argv.slice(2);
const options = { resource };
if (clientId) options.clientId = clientId;
if (msiEndpoint) options.msiEndpoint = msiEndpoint;
try {
  const credentials = await nodeauth.loginWithVmMSI(options);
  const t = await credentials.getToken();
  console.log(JSON.stringify({
    token: t.accessToken,
    tokenType: t.tokenType,
    expiresIn: t.expiresIn,
    expiresOnMs: t.expiresOn instanceof Date ? t.expiresOn.getTime() : null,
  }));
} catch (e) {
  console.log(JSON.stringify({ error: String((e && e.message) || e) }));
  process.exit(3);
}
