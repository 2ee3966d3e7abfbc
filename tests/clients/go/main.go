// Command get-token is an unmodified Go app asking IMDS for a token through one of the Go
// Azure SDKs (azidentity, or the legacy go-autorest adal). It prints the token and the
// expiry the SDK computed as one JSON line, or {"error": ...} and exit code 3.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore/policy"
	"github.com/Azure/azure-sdk-for-go/sdk/azidentity"
	"github.com/Azure/go-autorest/autorest/adal"
)

type result struct {
	Token     string `json:"token,omitempty"`
	ExpiresOn int64  `json:"expires_on,omitempty"`
	Error     string `json:"error,omitempty"`
}

func withAzidentity(resource, clientID string) (result, error) {
	options := &azidentity.ManagedIdentityCredentialOptions{}
	if clientID != "" {
		options.ID = azidentity.ClientID(clientID)
	}
	credential, err := azidentity.NewManagedIdentityCredential(options)
	if err != nil {
		return result{}, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	token, err := credential.GetToken(ctx, policy.TokenRequestOptions{Scopes: []string{resource + "/.default"}})
	if err != nil {
		return result{}, err
	}
	return result{Token: token.Token, ExpiresOn: token.ExpiresOn.Unix()}, nil
}

func withAdal(resource, clientID string) (result, error) {
	options := &adal.ManagedIdentityOptions{ClientID: clientID}
	spt, err := adal.NewServicePrincipalTokenFromManagedIdentity(resource, options)
	if err != nil {
		return result{}, err
	}
	if err := spt.EnsureFresh(); err != nil {
		return result{}, err
	}
	token := spt.Token()
	return result{Token: token.AccessToken, ExpiresOn: token.Expires().Unix()}, nil
}

func main() {
	sdk := flag.String("sdk", "azidentity", "azidentity or adal")
	resource := flag.String("resource", "https://management.azure.com", "the resource to ask a token for")
	clientID := flag.String("client-id", "", "a user-assigned identity's client id (default: system-assigned)")
	flag.Parse()
	get := map[string]func(string, string) (result, error){"azidentity": withAzidentity, "adal": withAdal}[*sdk]
	if get == nil {
		fmt.Fprintf(os.Stderr, "unknown -sdk %q\n", *sdk)
		os.Exit(2)
	}
	got, err := get(*resource, *clientID)
	if err != nil {
		got = result{Error: err.Error()}
	}
	line, _ := json.Marshal(got)
	fmt.Println(string(line))
	if err != nil {
		os.Exit(3)
	}
}
