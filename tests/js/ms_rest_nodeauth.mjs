// An unmodified legacy ms-rest-nodeauth app (MSIVmTokenCredentials): prints its token or error.
// Its IMDS address is an option; the test points it at the proxy.
import { MSIVmTokenCredentials } from "@azure/ms-rest-nodeauth";
const [msiEndpoint, resource] = process.argv.slice(2);
const credentials = new MSIVmTokenCredentials({ resource, msiEndpoint });
try {
  const t = await credentials.getToken();
  console.log(JSON.stringify({ token: t.accessToken, tokenType: t.tokenType }));
} catch (e) {
  console.log(JSON.stringify({ error: String(e && e.message || e) }));
  process.exit(3);
}
